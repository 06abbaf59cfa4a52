import numpy as np
import pytest
import soundfile as sf
import torch

from otalign.data.features import (AudioError, GlobalCMVN, compute_fbank, load_audio, num_frames, resample,
                                   spec_augment, speed_perturb)

from .conftest import write_wav


def test_fbank_has_80_bins_and_kaldi_frame_count_at_16khz(spoken_words):
    x = spoken_words[0]
    feats = compute_fbank(x, 16000)
    assert feats.shape == (1 + (x.size - 400) // 160, 80) == (num_frames(x.size, 16000), 80)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert compute_fbank(np.zeros(300, np.float32), 16000).shape == (0, 80)


def test_8khz_input_gives_16khz_frames_close_to_the_band_limited_16khz_features(spoken_words):
    # a band-limited (< 4 kHz) 16 kHz signal and its exact 8 kHz version
    x16 = resample(resample(spoken_words[1], 16000, 8000), 8000, 16000)
    x8 = resample(x16, 16000, 8000)
    f16, f8 = compute_fbank(x16, 16000), compute_fbank(x8, 8000)
    assert f8.shape == f16.shape
    # mel bins below ~3.5 kHz (bin 60 of 80 at 16 kHz is ~3.7 kHz); loud frames only
    loud = f16[:, :60].mean(axis=1) > f16[:, :60].mean(axis=1).max() - 30
    diff = np.abs(f16[loud, :60] - f8[loud, :60])
    assert np.median(diff) < 0.1 and diff.mean() < 0.3, (np.median(diff), diff.mean())
    # and an unrelated utterance is far away: the comparison can fail
    other = compute_fbank(spoken_words[2][: x16.size], 16000)
    n = min(len(other), len(f16))
    assert np.abs(other[:n, :60] - f16[:n, :60]).mean() > 1.0


def test_load_audio_reads_wav_flac_and_g722(tmp_path, spoken_words):
    x = spoken_words[0]
    for name in ("a.wav", "a.flac"):
        samples, sr = load_audio(write_wav(tmp_path / name, x))
        assert sr == 16000 and samples.dtype == np.float32 and np.abs(samples - x).max() < 1e-3
    g722 = "/usr/share/asterisk/sounds/en/hello.g722"
    import os
    if os.path.isfile(g722):
        samples, sr = load_audio(g722)
        assert sr == 16000 and samples.ndim == 1 and samples.size > 8000


def test_load_audio_rejects_missing_empty_corrupt_and_stereo_files(tmp_path, spoken_words):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(tmp_path / "corrupt.wav")
    sf.write(tmp_path / "nosamples.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "nosamples.wav")
    stereo = np.stack([spoken_words[0], spoken_words[0]], axis=1)
    write_wav(tmp_path / "stereo.wav", stereo)
    with pytest.raises(AudioError, match="2 channels"):
        load_audio(tmp_path / "stereo.wav")
    mixed, _ = load_audio(tmp_path / "stereo.wav", allow_multichannel=True)
    assert mixed.ndim == 1


def test_global_cmvn_normalises_and_round_trips(tmp_path, spoken_words):
    feats = [compute_fbank(x, 16000) for x in spoken_words]
    cmvn = GlobalCMVN.from_features(feats)
    normed = np.concatenate([cmvn(f) for f in feats])
    assert np.allclose(normed.mean(axis=0), 0, atol=1e-3) and np.allclose(normed.std(axis=0), 1, atol=1e-2)
    cmvn.save(tmp_path / "cmvn.json")
    loaded = GlobalCMVN.load(tmp_path / "cmvn.json")
    assert loaded.num_frames == sum(len(f) for f in feats)
    as_tensor = loaded.apply(torch.from_numpy(feats[0]))
    assert torch.allclose(as_tensor, torch.from_numpy(cmvn(feats[0])), atol=1e-4)
    with pytest.raises(ValueError, match="no statistics"):
        GlobalCMVN().apply(feats[0])


def test_spec_augment_masks_bands_and_spans_and_is_seeded(spoken_words):
    feats = compute_fbank(spoken_words[1], 16000)
    out = spec_augment(feats, np.random.default_rng(0), freq_mask_width=20, time_mask_width=30)
    again = spec_augment(feats, np.random.default_rng(0), freq_mask_width=20, time_mask_width=30)
    assert out.shape == feats.shape and np.array_equal(out, again)
    changed = out != feats
    masked_bins = changed.all(axis=0).sum()
    masked_frames = changed.all(axis=1).sum()
    assert 0 < masked_bins <= 40 and masked_frames <= 60
    assert not np.array_equal(out, spec_augment(feats, np.random.default_rng(1)))


def test_speed_perturbation_scales_duration():
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert abs(speed_perturb(x, 1.1).size - 16000 / 1.1) <= 1
    assert abs(speed_perturb(x, 0.9).size - 16000 / 0.9) <= 1
    assert speed_perturb(x, 1.0).size == 16000


def test_global_cmvn_from_manifest_matches_stats_of_its_features(tiny_corpus):
    from otalign.data.manifest import read_manifest

    corpus_dir, _ = tiny_corpus
    cmvn = GlobalCMVN.from_manifest(corpus_dir / "dev.jsonl")
    feats = np.concatenate([compute_fbank(*load_audio(u.audio_filepath))
                            for u in read_manifest(corpus_dir / "dev.jsonl")])
    assert np.allclose(cmvn.mean, feats.mean(axis=0), atol=1e-3)
    assert np.allclose(cmvn.std, feats.std(axis=0), rtol=1e-3)
