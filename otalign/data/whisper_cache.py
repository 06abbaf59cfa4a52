"""On-disk cache of a Whisper encoder's frozen bottom layers, one file per utterance and speed.

The file name is ``sha1(config key, audio identity)``: the config key is everything that
determines the states (``WhisperAcousticEncoder.cache_key()``: front-end name, package versions,
model.bin size/mtime, frozen layers, pooling, compute dtype, torch and converter versions) plus
the log-mel configuration and the storage dtype; the audio identity mirrors the fbank cache
(absolute path, size, mtime_ns, offset, duration, speed factor). Each ``.npz`` also stores its
key, which is compared on load, so a file written under another configuration is never reused.
Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from otalign.data.features import load_utterance_audio, speed_perturb
from otalign.data.whisper_features import WhisperFrontend

__all__ = ["WhisperStateCache"]


class WhisperStateCache:
    """``cache.states(utt, speed=1.0) -> (T', D) float32`` bottom states, computed once.

    Args:
        cache_dir: folder of the ``.npz`` files.
        config_key: JSON-able mapping of what determines the states (``encoder.cache_key()``).
        compute: ``(T, n_mels) log-mel -> (T', D)`` states (``encoder.bottom_numpy``-like).
        frontend: the log-mel front end. storage_dtype: ``float16`` (default) or ``float32``.
    """

    def __init__(self, cache_dir: str | os.PathLike, config_key: Mapping, compute: Callable[[np.ndarray], np.ndarray],
                 frontend: WhisperFrontend, storage_dtype: str = "float16"):
        if storage_dtype not in ("float16", "float32"):
            raise ValueError(f"storage_dtype must be float16 or float32, got {storage_dtype!r}")
        self.cache_dir = Path(cache_dir)
        self.compute = compute
        self.frontend = frontend
        self.storage_dtype = storage_dtype
        self.config = {**dict(config_key), "features": frontend.config, "storage_dtype": storage_dtype}
        self._config_json = json.dumps(self.config, sort_keys=True)
        self.hits = self.misses = 0

    def key(self, utt, speed: float = 1.0) -> str:
        stat = os.stat(utt.audio_filepath)
        audio = f"{os.path.abspath(utt.audio_filepath)}|{stat.st_size}|{stat.st_mtime_ns}|{utt.offset}|{utt.duration}|{speed}"
        return f"{self._config_json}|{audio}"

    def path(self, utt, speed: float = 1.0) -> Path:
        digest = hashlib.sha1(self.key(utt, speed).encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.npz"

    def states(self, utt, speed: float = 1.0) -> np.ndarray:
        key = self.key(utt, speed)
        path = self.path(utt, speed)
        if path.is_file():
            with np.load(path) as z:
                if str(z["key"]) == key:
                    self.hits += 1
                    return z["states"].astype(np.float32)
        self.misses += 1
        try:
            samples, rate = load_utterance_audio(utt)
        except ValueError as err:
            raise ValueError(f"utterance {utt.id!r}: {err}") from err
        feats = self.frontend(speed_perturb(samples, speed), rate, utt_id=utt.id)
        states = np.asarray(self.compute(feats), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, states=states.astype(self.storage_dtype), key=np.array(key))
        os.replace(tmp, path)
        return states.astype(self.storage_dtype).astype(np.float32)
