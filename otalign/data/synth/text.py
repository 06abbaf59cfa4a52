"""Text sources of the synthetic corpus: sentences from Debian fortunes, and what eSpeak speaks.

Sentences come from ``/usr/share/games/fortunes``, split at ``.!?``; kept when they contain only
letters and simple punctuation, no all-caps words (eSpeak would spell them) and normalise to 3-25
words; deduplicated by normalised text and sorted by it, so the pool does not depend on file
system order.
"""

from __future__ import annotations

import glob
import os
import re

from otalign.data.manifest import normalize_text

__all__ = ["FORTUNES_DIR", "load_fortune_sentences", "speak_text_and_words"]

FORTUNES_DIR = "/usr/share/games/fortunes"

_ALLOWED_SENTENCE = re.compile(r"^[A-Za-z ,.;:!?'\"\u2019()-]+$")
_ALL_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")
_ATTRIBUTION = re.compile(r"^\s*--")


def load_fortune_sentences(fortunes_dir: str = FORTUNES_DIR, min_words: int = 3,
                           max_words: int = 25) -> list[str]:
    """Sentences from the fortune files (split on ``%`` lines, then at ``.!?``), deduplicated.

    Returns the original sentences (with punctuation, for natural prosody), sorted by their
    normalised text so the pool does not depend on file system order.
    """
    files = sorted(f for f in glob.glob(os.path.join(fortunes_dir, "*"))
                   if os.path.isfile(f) and "." not in os.path.basename(f))
    if not files:
        raise ValueError(f"no fortune files in {fortunes_dir} (Debian: apt-get install fortunes fortunes-min)")
    by_normalized: dict[str, str] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        for block in re.split(r"^%\s*$", raw, flags=re.M):
            lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not _ATTRIBUTION.match(ln)]
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(lines)):
                sentence = sentence.strip()
                if not sentence or not _ALLOWED_SENTENCE.match(sentence) or _ALL_CAPS_WORD.search(sentence):
                    continue
                normalized = normalize_text(sentence)
                if min_words <= len(normalized.split()) <= max_words:
                    by_normalized.setdefault(normalized, sentence)
    return [by_normalized[k] for k in sorted(by_normalized)]


def speak_text_and_words(sentence: str) -> tuple[str, list[str], list[int]]:
    """The text eSpeak speaks, its normalised words, and each word's 0-based character offset.

    The spoken text is the normalised words with the sentence's ``,;:.!?`` kept after the word
    they follow (for natural pauses and intonation), so each spoken word is one manifest word.
    """
    words: list[str] = []
    pieces: list[str] = []
    offsets: list[int] = []
    position = 0
    for token in sentence.split():
        sub_words = normalize_text(token).split()
        if not sub_words:
            continue
        stripped = token.rstrip("'\"\u2019)")
        punctuation = stripped[-1] if stripped and stripped[-1] in ",;:.!?" else ""
        for k, word in enumerate(sub_words):
            piece = word + (punctuation if k == len(sub_words) - 1 else "")
            offsets.append(position)
            words.append(word)
            pieces.append(piece)
            position += len(piece) + 1
    return " ".join(pieces), words, offsets
