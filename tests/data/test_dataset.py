import numpy as np
import pytest
import torch

from otalign.data.dataset import BucketBatchSampler, SpeechDataset, collate_batch
from otalign.data.features import GlobalCMVN, compute_fbank, load_audio
from otalign.data.manifest import read_manifest


def test_dataset_returns_fbank_text_and_word_spans_and_caches_features(tiny_corpus, tmp_path):
    corpus_dir, _ = tiny_corpus
    cache = tmp_path / "cache"
    ds = SpeechDataset(corpus_dir / "dev.jsonl", cache_dir=cache)
    item = ds[0]
    utt = read_manifest(corpus_dir / "dev.jsonl")[0]
    expected = compute_fbank(*load_audio(utt.audio_filepath))
    assert item["id"] == utt.id and item["text"] == utt.text and item["words"] == utt.words
    assert item["feats"].shape == (len(expected), 80)
    assert torch.allclose(item["feats"], torch.from_numpy(expected))
    cached = list(cache.rglob("*.npy"))
    assert len(cached) == 1
    # a second access reads the cache: prove it by planting a marker value in the cached file
    planted = np.load(cached[0])
    planted[0, 0] = 12345.0
    np.save(cached[0], planted)
    assert ds[0]["feats"][0, 0].item() == 12345.0


def test_dataset_applies_cmvn_specaugment_and_speed_perturbation(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    plain = SpeechDataset(corpus_dir / "dev.jsonl")
    cmvn = GlobalCMVN.from_features(plain[i]["feats"].numpy() for i in range(len(plain)))
    normed = SpeechDataset(corpus_dir / "dev.jsonl", cmvn=cmvn)
    all_frames = torch.cat([normed[i]["feats"] for i in range(len(normed))])
    assert torch.allclose(all_frames.mean(0), torch.zeros(80), atol=1e-3)
    augmented = SpeechDataset(corpus_dir / "dev.jsonl", spec_augment=True, seed=1)
    assert not torch.equal(augmented[0]["feats"], plain[0]["feats"])
    fast = SpeechDataset(corpus_dir / "dev.jsonl", speed_factors=(1.1,))
    item = fast[0]
    assert abs(item["feats"].shape[0] - plain[0]["feats"].shape[0] / 1.1) <= 2
    assert item["words"][-1].end == pytest.approx(plain[0]["words"][-1].end / 1.1)


def test_collate_pads_features_and_reports_lengths(tiny_corpus):
    corpus_dir, _ = tiny_corpus
    ds = SpeechDataset(corpus_dir / "dev.jsonl")
    batch = collate_batch([ds[0], ds[1], ds[2]])
    lengths = [ds[i]["feats"].shape[0] for i in range(3)]
    assert batch["feats"].shape == (3, max(lengths), 80)
    assert batch["feat_lengths"].tolist() == lengths
    shortest = int(np.argmin(lengths))
    assert torch.all(batch["feats"][shortest, lengths[shortest]:] == 0)
    assert batch["ids"] == [ds[i]["id"] for i in range(3)] and len(batch["utterances"]) == 3


def _durations(n=203, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 12.0, n).tolist()


def test_bucket_sampler_yields_every_index_once_within_the_frame_budget():
    durations = _durations()
    sampler = BucketBatchSampler(durations, max_frames=4000, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(durations)))
        for b in batches:
            padded = max(int(np.ceil(durations[i] * 100)) for i in b) * len(b)
            assert padded <= 4000 or len(b) == 1
        assert len(sampler) == len(batches)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # reshuffled per epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # and reproducible


def test_bucket_sampler_groups_similar_durations():
    durations = _durations(500)
    batches = list(BucketBatchSampler(durations, max_seconds=40.0, seed=0, pool_batches=100))
    padding = sum(max(durations[i] for i in b) * len(b) - sum(durations[i] for i in b) for b in batches)
    assert padding / sum(durations) < 0.15


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_bucket_sampler_gives_every_ddp_rank_the_same_number_of_batches(num_replicas):
    durations = _durations(101, seed=num_replicas)
    samplers = [BucketBatchSampler(durations, max_frames=3000, seed=5, num_replicas=num_replicas, rank=r)
                for r in range(num_replicas)]
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len({len(b) for b in per_rank}) == 1
        flat = sorted(i for batches in per_rank for b in batches for i in b)
        assert flat == list(range(len(durations)))  # split, not repeated: each index exactly once


def test_bucket_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        BucketBatchSampler([1.0], max_frames=10, max_seconds=1.0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([1.0], max_frames=10, num_replicas=2, rank=2)


def test_dataset_names_the_utterance_whose_audio_is_missing(tmp_path):
    from otalign.data.manifest import Utterance

    ds = SpeechDataset([Utterance(id="lost-1", audio_filepath=str(tmp_path / "gone.wav"), duration=1.0, text="hi")])
    with pytest.raises(ValueError, match="utterance 'lost-1'.*does not exist"):
        ds[0]
