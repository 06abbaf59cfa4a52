"""Audio loading, 80-dim log-mel fbank, global CMVN, SpecAugment and speed perturbation.

fbank: kaldi-native-fbank, 25 ms window, 10 ms hop, 80 mel bins, povey window, no dither at eval,
``snip_edges=True`` so ``T = 1 + (num_samples - 400) // 160`` frames at 16 kHz. Audio at any other
rate is resampled to 16 kHz first (``scipy.signal.resample_poly``), so 8 kHz input gives the same
frame count and, for band-limited content, nearly the same features as 16 kHz input (the bins above
4 kHz are then empty, as they must be).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = [
    "FEATURE_SAMPLE_RATE",
    "NUM_MEL_BINS",
    "AudioError",
    "MissingAudio",
    "EmptyAudio",
    "CorruptAudio",
    "TruncatedAudio",
    "MultichannelAudio",
    "load_audio",
    "load_utterance_audio",
    "resample",
    "compute_fbank",
    "num_frames",
    "GlobalCMVN",
    "spec_augment",
    "speed_perturb",
]

FEATURE_SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


class AudioError(ValueError):
    """Audio that cannot be used: missing, unreadable, empty or not mono.

    Callers classify a failure by its subclass (``category`` is the skip-count label), never by
    the message text.
    """

    category = "unreadable audio"


class MissingAudio(AudioError):
    category = "missing audio"


class EmptyAudio(AudioError):
    category = "empty audio"


class CorruptAudio(AudioError):
    category = "unreadable audio"


class TruncatedAudio(AudioError):
    category = "truncated audio"


class MultichannelAudio(AudioError):
    category = "stereo audio"


def check_audio_file(path: str | os.PathLike) -> str:
    """The path as a string; ``MissingAudio``/``EmptyAudio`` naming it when missing or 0 bytes."""
    path = str(path)
    if not os.path.isfile(path):
        raise MissingAudio(f"audio file {path} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise EmptyAudio(f"audio file {path} is empty (0 bytes)")
    declared = _riff_data_bytes(path)
    if declared is not None and declared[0] + declared[1] > size:
        offset, data_bytes = declared
        raise TruncatedAudio(f"audio file {path} is truncated: its header declares {data_bytes} bytes of samples, the file holds {max(0, size - offset)}")
    return path


def _riff_data_bytes(path: str) -> tuple[int, int] | None:
    """``(offset, size)`` of a WAV file's ``data`` chunk as its header declares it, or None for
    other formats. libsndfile reads a truncated WAV silently up to where it ends, so the header
    is the only record of what the file should hold. Streamed WAVs (size 0 or 0xFFFFFFFF) and
    odd headers are left to the decoder."""
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        for _ in range(64):  # chunks before 'data' (fmt, LIST, fact, ...)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                return None if length in (0, 0xFFFFFFFF) else (f.tell(), length)
            f.seek(length + (length & 1), os.SEEK_CUR)
    return None


def load_audio(path: str | os.PathLike, offset_s: float = 0.0, duration_s: float | None = None,
               allow_multichannel: bool = False) -> tuple[np.ndarray, int]:
    """Read audio as float32 mono in [-1, 1] and its sample rate.

    soundfile reads WAV/FLAC/OGG; anything else (or a file soundfile cannot parse, e.g. G.722) is
    decoded by PyAV. ``offset_s``/``duration_s`` select a segment (Kaldi ``segments``, NeMo
    ``offset``). Raises ``AudioError`` naming the file when it is missing, unreadable, empty, or has
    more than one channel (unless ``allow_multichannel``, which averages the channels).
    """
    path = check_audio_file(path)
    try:
        samples, sample_rate = _read_soundfile(path, offset_s, duration_s)
    except AudioError:
        raise
    except Exception as sf_error:  # soundfile raises its own LibsndfileError / RuntimeError types
        try:
            samples, sample_rate = _read_pyav(path, offset_s, duration_s)
        except Exception as av_error:
            raise CorruptAudio(f"audio file {path} is unreadable ({sf_error}; PyAV: {av_error})") from av_error
    if samples.ndim == 2:
        if samples.shape[1] == 1:
            samples = samples[:, 0]
        elif allow_multichannel:
            samples = samples.mean(axis=1)
        else:
            raise MultichannelAudio(f"audio file {path} has {samples.shape[1]} channels; only mono is accepted "
                                    f"(otalign prepare --allow-multichannel downmixes it and records "
                                    f"\"downmix\": true in the manifest)")
    if samples.size == 0:
        raise EmptyAudio(f"audio file {path} holds no samples")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate)


def load_utterance_audio(utt) -> tuple[np.ndarray, int]:
    """The samples of a manifest entry (``otalign.data.manifest.Utterance``) as float32 mono and
    its sample rate: its segment (``offset``, bounded by ``duration``), and the mean of its channels
    when the entry says ``downmix`` (what ``prepare --allow-multichannel`` accepted and recorded).
    Every reader of a manifest's audio (training, CMVN, decoding) goes through this, so each
    accepts exactly what ``prepare`` accepted, downmixed the same way."""
    return load_audio(utt.audio_filepath, utt.offset, utt.duration, allow_multichannel=bool(getattr(utt, "downmix", False)))


def _read_soundfile(path: str, offset_s: float, duration_s: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    info = sf.info(path)
    start = int(round(offset_s * info.samplerate))
    stop = None if duration_s is None else start + int(round(duration_s * info.samplerate))
    samples, sample_rate = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return samples, sample_rate


def _read_pyav(path: str, offset_s: float, duration_s: float | None) -> tuple[np.ndarray, int]:
    import av

    options = {}
    if path.endswith(".g722"):
        # raw G.722 has no header: name the format; Asterisk's G.722 files are 16 kHz mono
        container = av.open(path, format="g722")
    else:
        container = av.open(path, options=options)
    with container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        frames = []
        sample_rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            sample_rate = frame.sample_rate
            if array.dtype.kind == "i":
                array = array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
            if frame.format.is_planar:
                frames.append(array.T)  # (channels, n) -> (n, channels)
            else:
                frames.append(array.reshape(-1, channels))
    samples = np.concatenate(frames).astype(np.float32) if frames else np.zeros((0, channels), np.float32)
    start = int(round(offset_s * sample_rate))
    stop = None if duration_s is None else start + int(round(duration_s * sample_rate))
    return samples[start:stop], sample_rate


def resample(samples: np.ndarray, from_rate: int, to_rate: int = FEATURE_SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (linear phase, delay compensated: times are preserved)."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # imported here: scipy.signal costs 1-2 s at start-up

    ratio = Fraction(to_rate, from_rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def num_frames(num_samples: int, sample_rate: int = FEATURE_SAMPLE_RATE) -> int:
    """fbank frames for ``num_samples`` at ``sample_rate`` (after resampling to 16 kHz)."""
    n = int(round(num_samples * FEATURE_SAMPLE_RATE / sample_rate))
    window, hop = int(FEATURE_SAMPLE_RATE * FRAME_LENGTH_MS / 1000), int(FEATURE_SAMPLE_RATE * FRAME_SHIFT_MS / 1000)
    return 0 if n < window else 1 + (n - window) // hop


_FBANK_OPTS = None


def _fbank_options(dither: float):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = FEATURE_SAMPLE_RATE
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = dither
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = NUM_MEL_BINS
    return opts


def compute_fbank(samples: np.ndarray, sample_rate: int, dither: float = 0.0) -> np.ndarray:
    """80-dim log-mel filterbank, shape ``(frames, 80)``, float32, 25 ms / 10 ms at 16 kHz.

    ``samples`` are float mono in [-1, 1] at any ``sample_rate`` (resampled to 16 kHz first). They
    are scaled to the 16-bit range as Kaldi expects. ``dither`` (in 16-bit units) is 0 at eval;
    training may use a small value (e.g. 1.0). Returns ``(0, 80)`` for audio shorter than 25 ms.
    """
    import kaldi_native_fbank as knf

    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"compute_fbank expects mono 1-D samples, got shape {samples.shape}")
    samples16k = resample(samples.astype(np.float32), sample_rate, FEATURE_SAMPLE_RATE)
    fbank = knf.OnlineFbank(_fbank_options(dither))
    fbank.accept_waveform(FEATURE_SAMPLE_RATE, samples16k * 32768.0)
    fbank.input_finished()
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    return np.stack([fbank.get_frame(i) for i in range(n)]).astype(np.float32)


class GlobalCMVN:
    """Global mean and variance normalisation: ``(x - mean) / sqrt(var + 1e-10)`` per mel bin.

    Statistics are accumulated over all frames of a corpus (``accumulate`` or ``from_features``),
    saved as JSON ``{"mean": [...], "std": [...], "num_frames": n}`` and applied to (T, D) arrays or
    torch tensors (any leading dims).
    """

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None, num_frames: int = 0):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.num_frames = num_frames
        self._sum: np.ndarray | None = None
        self._sum_sq: np.ndarray | None = None

    def accumulate(self, feats: np.ndarray) -> None:
        feats = np.asarray(feats, dtype=np.float64)
        if self._sum is None:
            self._sum = np.zeros(feats.shape[1])
            self._sum_sq = np.zeros(feats.shape[1])
        self._sum += feats.sum(axis=0)
        self._sum_sq += (feats ** 2).sum(axis=0)
        self.num_frames += feats.shape[0]
        self.mean = self._sum / self.num_frames
        variance = np.maximum(self._sum_sq / self.num_frames - self.mean ** 2, 1e-10)
        self.std = np.sqrt(variance)

    @classmethod
    def from_features(cls, features: Iterable[np.ndarray]) -> "GlobalCMVN":
        cmvn = cls()
        for feats in features:
            if len(feats):
                cmvn.accumulate(feats)
        if cmvn.num_frames == 0:
            raise ValueError("GlobalCMVN.from_features: no frames")
        return cmvn

    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike, max_utterances: int | None = None) -> "GlobalCMVN":
        """Statistics over the fbank of a manifest's utterances (the first ``max_utterances``)."""
        from otalign.data.manifest import read_manifest

        utterances = read_manifest(manifest).utterances[:max_utterances]

        def features():
            for utt in utterances:
                try:
                    samples, rate = load_utterance_audio(utt)
                except AudioError as err:
                    raise ValueError(f"utterance {utt.id!r}: {err}") from err
                yield compute_fbank(samples, rate)

        return cls.from_features(features())

    def apply(self, feats):
        if self.mean is None:
            raise ValueError("GlobalCMVN has no statistics: accumulate, from_features or load first")
        try:
            import torch

            if isinstance(feats, torch.Tensor):
                mean = torch.as_tensor(self.mean, dtype=feats.dtype, device=feats.device)
                std = torch.as_tensor(self.std, dtype=feats.dtype, device=feats.device)
                return (feats - mean) / std
        except ImportError:  # pragma: no cover
            pass
        return ((np.asarray(feats) - self.mean) / self.std).astype(np.float32)

    __call__ = apply

    def to_dict(self) -> dict:
        """The statistics as a JSON-ready dict (the form stored in checkpoints and cmvn.json)."""
        if self.mean is None:
            raise ValueError("GlobalCMVN has no statistics to export")
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "num_frames": self.num_frames}

    @classmethod
    def from_dict(cls, stats: dict) -> "GlobalCMVN":
        try:
            return cls(np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64),
                       int(stats.get("num_frames", 0)))
        except KeyError as err:
            raise ValueError(f"CMVN statistics lack {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GlobalCMVN":
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        try:
            return cls.from_dict(stats)
        except ValueError as err:
            raise ValueError(f"CMVN file {path}: {err}") from err


def spec_augment(feats: np.ndarray, rng: np.random.Generator, num_freq_masks: int = 2,
                 freq_mask_width: int = 27, num_time_masks: int = 2, time_mask_width: int = 40,
                 max_time_mask_fraction: float = 0.2) -> np.ndarray:
    """SpecAugment (Park et al. 2019) without time warping: masks set to the utterance mean.

    ``num_freq_masks`` bands of width ``U[0, freq_mask_width]`` (27 of 80 bins is LibriSpeech's
    "LD" policy) and ``num_time_masks`` spans of width ``U[0, min(time_mask_width,
    max_time_mask_fraction * T)]`` frames. Returns a new array.
    """
    out = np.array(feats, dtype=np.float32, copy=True)
    num_frames_, num_bins = out.shape
    if num_frames_ == 0:
        return out
    fill = float(out.mean())
    for _ in range(num_freq_masks):
        width = int(rng.integers(0, min(freq_mask_width, num_bins) + 1))
        start = int(rng.integers(0, num_bins - width + 1))
        out[:, start:start + width] = fill
    max_width = int(min(time_mask_width, max_time_mask_fraction * num_frames_))
    for _ in range(num_time_masks):
        width = int(rng.integers(0, max_width + 1))
        start = int(rng.integers(0, num_frames_ - width + 1))
        out[start:start + width, :] = fill
    return out


def speed_perturb(samples: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation by resampling (tempo and pitch change together, as in Kaldi/ESPnet).

    ``factor`` 1.1 makes the audio 10% shorter. Word times scale by ``1 / factor``.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(factor).limit_denominator(100)
    # play at rate*factor: keep the samples, pretend they were recorded at rate*factor, resample back
    return resample_poly(samples, ratio.denominator, ratio.numerator).astype(np.float32)
