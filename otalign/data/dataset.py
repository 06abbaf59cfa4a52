"""A torch Dataset over a manifest, its collate function, and a duration-bucketed batch sampler.

Features are cached on disk, one ``.npy`` per utterance and speed factor, under ``cache_dir`` keyed
by ``sha1(audio path, file size, mtime_ns, offset, duration, speed factor)`` (plus the front end's
configuration for Whisper log-mel): later epochs read the cache instead of recomputing features,
and an edited audio file gets a new key. With a Whisper encoder whose bottom layers are frozen, a
``WhisperStateCache`` (otalign.data.whisper_cache) serves those layers' outputs instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from otalign.data.features import (GlobalCMVN, check_audio_file, compute_fbank, load_utterance_audio, spec_augment,
                                   speed_perturb)
from otalign.data.manifest import Utterance, read_manifest

__all__ = ["SpeechDataset", "collate_batch", "BucketBatchSampler"]

FRAMES_PER_SECOND = 100  # 10 ms hop


class SpeechDataset(Dataset):
    """Utterances of a manifest as acoustic features.

    Each item is a dict: ``feats`` (float32 tensor (T, 80), CMVN applied when ``cmvn`` is given,
    SpecAugment when ``spec_augment=True``), ``text``, ``id``, ``words`` (list of ``WordSpan`` or
    None; times scaled by ``1/speed`` under speed perturbation) and ``utterance``.

    Args:
        manifest: a manifest path or a list of ``Utterance``.
        cache_dir: where feature ``.npy`` files go; None disables caching.
        frontend: 'fbank' (80-dim Kaldi fbank) or a Whisper front end name ('whisper-tiny.en',
            'whisper-base'): Whisper's own 80-bin log-mel (no CMVN: it is normalised as Whisper was trained).
        state_cache: a ``WhisperStateCache``; when given, ``feats`` are the cached outputs of the
            frozen bottom encoder layers, (T', D) at 20 ms, and SpecAugment does not apply.
        speed_factors: e.g. ``(0.9, 1.0, 1.1)`` for speed perturbation (one drawn per access);
            default ``(1.0,)``.
        seed: seeds the per-access random choices (speed factor, SpecAugment masks) together with
            the epoch (``set_epoch``) and the index, so runs are reproducible.
    """

    def __init__(self, manifest: str | os.PathLike | Sequence[Utterance], cache_dir: str | os.PathLike | None = None,
                 cmvn: GlobalCMVN | None = None, spec_augment: bool = False, speed_factors: Sequence[float] = (1.0,),
                 seed: int = 0, strict: bool = False, frontend: str = "fbank", state_cache=None):
        if isinstance(manifest, (str, os.PathLike)):
            result = read_manifest(manifest, strict=strict)
            self.utterances = list(result.utterances)
            self.read_summary = result.summary
        else:
            self.utterances = list(manifest)
            self.read_summary = None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cmvn = cmvn
        self.spec_augment = spec_augment
        self.speed_factors = tuple(speed_factors)
        if not self.speed_factors or any(f <= 0 for f in self.speed_factors):
            raise ValueError(f"speed_factors must be positive, got {speed_factors}")
        self.seed = seed
        self.epoch = 0
        self.frontend = frontend
        self.state_cache = state_cache
        self._log_mel = None
        self._frontend_key = ""
        if frontend != "fbank":
            from otalign.data.whisper_features import WhisperFrontend

            if cmvn is not None:
                raise ValueError(f"CMVN applies to fbank features only, not to {frontend}'s log-mel")
            self._log_mel = WhisperFrontend(80)
            self._frontend_key = "|" + json.dumps({"frontend": frontend, **self._log_mel.config}, sort_keys=True)

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utterances]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cache_path(self, utt: Utterance, speed: float) -> Path | None:
        if self.cache_dir is None:
            return None
        try:
            stat = os.stat(check_audio_file(utt.audio_filepath))
        except ValueError as err:  # MissingAudio / EmptyAudio, named with the utterance
            raise type(err)(f"utterance {utt.id!r}: {err}") from err
        key = f"{os.path.abspath(utt.audio_filepath)}|{stat.st_size}|{stat.st_mtime_ns}|{utt.offset}|{utt.duration}|{speed}"
        key += self._frontend_key  # empty for fbank, so existing fbank caches stay valid
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.npy"

    def features(self, index: int, speed: float = 1.0) -> np.ndarray:
        """Raw (un-normalised) features of utterance ``index`` (or its cached bottom states), from
        the cache when present."""
        utt = self.utterances[index]
        if self.state_cache is not None:
            return self.state_cache.states(utt, speed)
        path = self._cache_path(utt, speed)
        if path is not None and path.is_file():
            return np.load(path)
        try:
            # always bounded by the manifest duration: a Kaldi segment may start at 0 and end early
            samples, sample_rate = load_utterance_audio(utt)
        except ValueError as err:  # keeps the AudioError subclass: decode skips and counts by type
            raise type(err)(f"utterance {utt.id!r}: {err}") from err
        samples = speed_perturb(samples, speed)
        if self._log_mel is not None:
            feats = self._log_mel(samples, sample_rate, utt_id=utt.id)
        else:
            feats = compute_fbank(samples, sample_rate)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, feats)
            os.replace(tmp, path)  # atomic: concurrent DataLoader workers never see half a file
        return feats

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        speed = float(self.speed_factors[int(rng.integers(len(self.speed_factors)))])
        feats = self.features(index, speed)
        if self.cmvn is not None:
            feats = self.cmvn.apply(feats)
        if self.spec_augment and self.state_cache is None:
            feats = spec_augment(feats, rng)
        words = utt.words
        if words is not None and speed != 1.0:
            words = [type(w)(w.word, w.start / speed, w.end / speed) for w in words]
        return {"feats": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)), "text": utt.text,
                "id": utt.id, "words": words, "utterance": utt, "speed": speed}


def collate_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad features to ``(B, T_max, 80)`` (zeros) with ``feat_lengths`` (B,) int64; keep the rest as lists."""
    lengths = torch.tensor([item["feats"].shape[0] for item in items], dtype=torch.long)
    dim = items[0]["feats"].shape[1]
    feats = torch.zeros(len(items), int(lengths.max()) if len(items) else 0, dim, dtype=torch.float32)
    for b, item in enumerate(items):
        feats[b, : item["feats"].shape[0]] = item["feats"]
    return {"feats": feats, "feat_lengths": lengths, "texts": [i["text"] for i in items],
            "ids": [i["id"] for i in items], "words": [i["words"] for i in items],
            "utterances": [i["utterance"] for i in items]}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of utterances of similar duration under a padded-frame budget, DDP-aware.

    Per epoch (seeded by ``seed`` and ``set_epoch``): shuffle the indices, cut them into pools of
    ``pool_batches`` batches' worth, sort each pool by duration, fill batches greedily while
    ``batch_size * max_duration_in_batch`` stays within the budget, then shuffle the batches. Each
    index appears exactly once per epoch (an utterance longer than the budget gets a batch of its
    own). With ``num_replicas > 1`` the batch list is made divisible by ``num_replicas`` by
    splitting the largest batches in two (no index is repeated; only if every batch is a single
    utterance are batches repeated, or dropped with ``drop_last``), and rank ``r`` takes batches
    ``r, r + num_replicas, ...``, so every rank gets the same number of batches.

    Args:
        durations: seconds per utterance.
        max_frames: budget in padded fbank frames (100 per second) per batch, or
        max_seconds: the same budget in padded seconds (give exactly one of the two).
    """

    def __init__(self, durations: Sequence[float], max_frames: int | None = None, max_seconds: float | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, num_replicas: int = 1, rank: int = 0,
                 pool_batches: int = 50):
        if (max_frames is None) == (max_seconds is None):
            raise ValueError("give exactly one of max_frames and max_seconds")
        self.max_frames = int(max_frames if max_frames is not None else round(max_seconds * FRAMES_PER_SECOND))
        if self.max_frames <= 0:
            raise ValueError(f"the batch budget must be positive, got {self.max_frames} frames")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.frames = [int(np.ceil(d * FRAMES_PER_SECOND)) for d in durations]
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.pool_batches = pool_batches
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.frames)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        mean_frames = max(1.0, float(np.mean(self.frames))) if n else 1.0
        pool_size = max(1, int(self.pool_batches * max(1.0, self.max_frames / mean_frames)))
        batches: list[list[int]] = []
        for p in range(0, n, pool_size):
            pool = sorted(order[p:p + pool_size].tolist(), key=lambda i: self.frames[i])
            batch: list[int] = []
            longest = 0
            for i in pool:
                new_longest = max(longest, self.frames[i])
                if batch and new_longest * (len(batch) + 1) > self.max_frames:
                    batches.append(batch)
                    batch, new_longest = [], self.frames[i]
                batch.append(i)
                longest = new_longest
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        batches = self._divisible(batches)
        self._cached = (self.epoch, batches)
        return batches

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        r = self.num_replicas
        if r == 1 or len(batches) % r == 0:
            return batches
        if self.drop_last:
            return batches[: len(batches) - len(batches) % r]
        batches = list(batches)
        while len(batches) % r:
            largest = max(range(len(batches)), key=lambda k: len(batches[k]))
            if len(batches[largest]) < 2:
                break
            half = len(batches[largest]) // 2
            batches[largest:largest + 1] = [batches[largest][:half], batches[largest][half:]]
        while len(batches) % r:  # only single-utterance batches left: repeat some (as DistributedSampler)
            batches.append(batches[len(batches) % max(1, len(batches))])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return len(self._all_batches()[self.rank::self.num_replicas])
