"""On-disk cache of PLM states, one file per utterance, so training never reruns the PLM.

Layout: ``<cache_dir>/<key[:2]>/<key>.pt`` with ``key = sha1(model name, layer, keep_special, text)``;
the model name is :attr:`PLMTeacher.name` (its directory and a hash of its config and vocabulary) and
the layer is :func:`layer_key` (``-1``, or ``mean(4,5,6)`` for a list), so an entry made for another
model or layer is never served.
Each file is a ``torch.save`` dict ``{"states": (n, D) float16, "word_index": (n,) int64,
"token_strings": list[str], "text": str}``. Writes are atomic (temp file + rename), so several
DDP ranks may fill the same cache at once.

States are stored in float16 (half the disk, the PLM is fp32 but cosine targets do not need more);
``get`` always returns the float16-rounded values, whether the entry was just computed or read,
so a run gives the same targets on its first and later epochs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from otalign.text.teacher import PLMTeacher, TeacherOutput, center_per_utterance, layer_key, parse_layers, teacher_from_config


class TeacherCache:
    """Batched, per-utterance cache in front of a :class:`PLMTeacher`.

    Args:
        cache_dir: folder for the cache files (created).
        teacher: the PLM used to fill missing entries. ``None`` = read-only mode, in which case
            ``name`` and ``layer`` must be given and a missing entry raises ``ValueError``.
        name, layer, keep_special: key components, taken from ``teacher`` when it is given.
        center: ``get`` returns states centred per utterance (:func:`center_per_utterance`).
            The files keep the raw states, so centred and raw runs share one cache.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        teacher: PLMTeacher | None,
        name: str | None = None,
        layer: int | list[int] | None = None,
        keep_special: bool = False,
        center: bool = False,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.teacher = teacher
        if teacher is not None:
            self.name, self.layer, self.keep_special = teacher.name, teacher.layer, teacher.keep_special
        else:
            if name is None or layer is None:
                raise ValueError("TeacherCache without a teacher needs name= and layer=")
            self.name, self.layer, self.keep_special = name, parse_layers(layer), keep_special
        self.center = center
        self.hits = 0
        self.misses = 0

    def key(self, text: str) -> str:
        h = hashlib.sha1()
        h.update(f"{self.name}\0layer={layer_key(self.layer)}\0special={int(self.keep_special)}\0".encode())
        h.update(text.encode("utf-8"))
        return h.hexdigest()

    def path(self, text: str) -> Path:
        k = self.key(text)
        return self.cache_dir / k[:2] / f"{k}.pt"

    def _read(self, text: str) -> dict | None:
        p = self.path(text)
        if not p.is_file():
            return None
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a truncated file from a killed run: recompute it
            return None
        if entry.get("text") != text:  # sha1 collision or a foreign file: never trust it
            return None
        return entry

    def _write(self, text: str, entry: dict) -> None:
        p = self.path(text)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(entry, tmp)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _compute(self, texts: list[str], batch_size: int) -> dict[str, dict]:
        if self.teacher is None:
            raise ValueError(
                f"{len(texts)} text(s) are not in the PLM cache {self.cache_dir} and no teacher was "
                f"given to compute them (first: {texts[0]!r})"
            )
        entries: dict[str, dict] = {}
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out = self.teacher.encode(chunk)
            for b, text in enumerate(chunk):
                n = int(out.mask[b].sum())
                entry = {
                    "states": out.states[b, :n].to(torch.float16).clone(),
                    "word_index": out.word_index[b, :n].clone(),
                    "token_strings": list(out.token_strings[b]),
                    "text": text,
                }
                self._write(text, entry)
                entries[text] = entry
        return entries

    def get(self, texts: list[str], batch_size: int = 32) -> TeacherOutput:
        """States for ``texts`` (padded batch), reading the cache and filling what is missing."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        found: dict[str, dict] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):  # unique, order kept
            e = self._read(t)
            if e is None:
                missing.append(t)
            else:
                found[t] = e
        self.hits += len(texts) - sum(1 for t in texts if t in missing)
        self.misses += len(missing)
        if missing:
            found.update(self._compute(missing, batch_size))
        out = collate_entries([found[t] for t in texts])
        if self.center:
            out.states = center_per_utterance(out.states, out.mask)
        return out

    def encode(self, texts: list[str]) -> TeacherOutput:
        """:meth:`get` under the teacher's name, so a cache stands wherever a teacher is expected
        (``otalign.align.sweep.examples_from_encoder``)."""
        return self.get(list(texts))

    @property
    def width(self) -> int | None:
        return self.teacher.width if self.teacher is not None else None

    def precompute(self, texts: Iterable[str], batch_size: int = 32, progress: bool = True) -> int:
        """Fill the cache for every text not yet in it; returns how many were computed."""
        missing = [t for t in dict.fromkeys(texts) if self._read(t) is None]
        if not missing:
            return 0
        # Sorting by length keeps padding (and PLM time) low within a batch.
        missing.sort(key=len)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc="PLM cache", unit="utt")
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            self._compute(chunk, batch_size)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        self.misses += len(missing)
        return len(missing)


def targets_from_config(teacher_config, device: str = "cpu") -> TeacherCache:
    """The transfer targets a ``TeacherConfig`` (or a checkpoint's stored ``config["teacher"]``
    dict) describes: its PLM (:func:`teacher_from_config`: model, model_dir, layer) behind its
    cache, centred if ``center``. Training's targets and every evaluation of a trained system
    (``train.evaluate.alignment_metrics``, ``otalign align --ckpt``, the demo's plots) come
    from here, so they score against the same states."""
    def field(name, default=None):
        if isinstance(teacher_config, dict):
            return teacher_config.get(name, default)
        return getattr(teacher_config, name, default)

    plm = teacher_from_config(teacher_config, device=device)
    return TeacherCache(field("cache_dir", "exp/cache/plm"), plm, center=bool(field("center", False)))


def collate_entries(entries: list[dict]) -> TeacherOutput:
    """Pad per-utterance cache entries into one :class:`TeacherOutput` (float32 states)."""
    if not entries:
        raise ValueError("entries is empty")
    D = int(entries[0]["states"].shape[-1])
    B = len(entries)
    N = max(1, max(int(e["states"].shape[0]) for e in entries))
    states = torch.zeros(B, N, D, dtype=torch.float32)
    mask = torch.zeros(B, N, dtype=torch.bool)
    word_index = torch.full((B, N), -1, dtype=torch.long)
    strings = []
    for b, e in enumerate(entries):
        n = int(e["states"].shape[0])
        states[b, :n] = e["states"].float()
        mask[b, :n] = True
        word_index[b, :n] = e["word_index"]
        strings.append(list(e["token_strings"]))
    return TeacherOutput(states, mask, word_index, strings)
