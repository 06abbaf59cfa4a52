"""Output units of the CTC head: characters (default) or SentencePiece pieces.

Both tokenizers share one interface: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``blank_id`` (always 0, the CTC blank, as in ESPnet/WeNet/icefall),
``save(path)`` and ``load(path)``. Text is normalised the same way by both: lower-cased, runs of
whitespace collapsed to one space, leading/trailing whitespace stripped.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

BLANK = "<blank>"
# The word separator is stored in the vocabulary as "|" (wav2vec2 / fairseq convention) so that a
# vocabulary file never contains a bare space, which is easy to lose in editors; ``encode`` takes
# and ``decode`` returns ordinary spaces.
WORD_SEPARATOR = "|"
DEFAULT_CHARS: tuple[str, ...] = ("'", WORD_SEPARATOR) + tuple("abcdefghijklmnopqrstuvwxyz")

_WHITESPACE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    """Lower-case and collapse whitespace. Transcripts are normalised once, when a manifest is made
    (``otalign.data.manifest.normalize_text``); this only makes encode/decode robust to spacing."""
    return _WHITESPACE.sub(" ", text.lower()).strip()


class CharTokenizer:
    """Character vocabulary: ``0 = <blank>, 1 = "'", 2 = "|" (space), 3.. = a..z``.

    Args:
        symbols: the non-blank symbols in id order (ids start at 1). Default: apostrophe, the word
            separator ``"|"`` and a-z (29 units with the blank).
        unknown: ``"error"`` (default) raises ``ValueError`` naming the first out-of-vocabulary
            character; ``"skip"`` drops such characters (e.g. punctuation in real transcripts).
    """

    kind = "char"

    def __init__(self, symbols: Sequence[str] = DEFAULT_CHARS, unknown: str = "error") -> None:
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
        symbols = list(symbols)
        if BLANK in symbols:
            raise ValueError(f"symbols must not contain the blank {BLANK!r}: it is always id 0")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols contains duplicates")
        for s in symbols:
            if len(s) != 1:
                raise ValueError(f"symbols must be single characters, got {s!r}")
        self.symbols: list[str] = [BLANK] + symbols
        self.unknown = unknown
        self._id_of = {s: i for i, s in enumerate(self.symbols)}

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        """Normalise ``text`` and map each character to its id (space -> the ``"|"`` id)."""
        ids: list[int] = []
        for ch in collapse_whitespace(text):
            key = WORD_SEPARATOR if ch == " " else ch
            idx = self._id_of.get(key)
            if idx is None or idx == 0:
                if self.unknown == "skip":
                    continue
                raise ValueError(
                    f"character {ch!r} (U+{ord(ch):04X}) in text {text!r} is not in the "
                    f"vocabulary; pass unknown='skip' to drop it"
                )
            ids.append(idx)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text; blanks are dropped, ``"|"`` becomes a space, whitespace collapsed."""
        chars = []
        for i in ids:
            i = int(i)
            if i == 0:
                continue
            if not 0 < i < len(self.symbols):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self.symbols)})")
            s = self.symbols[i]
            chars.append(" " if s == WORD_SEPARATOR else s)
        return collapse_whitespace("".join(chars))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "symbols": self.symbols[1:], "unknown": self.unknown}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        return tokenizer_from_dict(_read_json(path), source=str(path))  # type: ignore[return-value]


class SentencePieceTokenizer:
    """SentencePiece (unigram by default) units with the CTC blank at id 0.

    SentencePiece's own id 0 is its ``<unk>``; we shift every piece id by one so that id 0 is
    the blank and the CTC head has ``sp.vocab_size() + 1`` outputs. The serialized model proto
    is kept in memory, so ``save`` writes one self-contained JSON file.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 256,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
    ) -> "SentencePieceTokenizer":
        """Train a SentencePiece model from normalised ``texts`` (deterministic, single thread)."""
        import sentencepiece as spm

        lines = [collapse_whitespace(t) for t in texts]
        lines = [t for t in lines if t]
        if not lines:
            raise ValueError("texts is empty: cannot train a SentencePiece model")
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text("\n".join(lines) + "\n")
            prefix = str(Path(tmp) / "sp")
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                num_threads=1,
                bos_id=-1,
                eos_id=-1,
                unk_id=0,
                hard_vocab_limit=False,
                minloglevel=2,
            )
            proto = Path(prefix + ".model").read_bytes()
        return cls(proto)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(collapse_whitespace(text), out_type=int)]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if i == 0:
                continue
            if not 0 < i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            pieces.append(i - 1)
        return collapse_whitespace(self._sp.decode(pieces))

    def to_dict(self) -> dict:
        import base64

        return {"kind": self.kind, "model_proto_b64": base64.b64encode(self._proto).decode("ascii")}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        return tokenizer_from_dict(_read_json(path), source=str(path))  # type: ignore[return-value]


Tokenizer = CharTokenizer | SentencePieceTokenizer


def tokenizer_from_dict(d: dict, source: str = "<dict>") -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output (used by ``load`` and by exported models)."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(symbols=d["symbols"], unknown=d.get("unknown", "error"))
    if kind == "sentencepiece":
        import base64

        return SentencePieceTokenizer(base64.b64decode(d["model_proto_b64"]))
    raise ValueError(f"{source}: unknown tokenizer kind {kind!r} (expected 'char' or 'sentencepiece')")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load whichever tokenizer kind ``path`` holds."""
    return tokenizer_from_dict(_read_json(path), source=str(path))


def _read_json(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"tokenizer file {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer file {p} is not valid JSON: {e}") from e
