"""CER/WER with jiwer, per-utterance error files, results files and the real-time factor.

Text is normalised before scoring (:func:`normalize_for_scoring`): lower-case, punctuation
removed except apostrophes inside words ("don't" stays), whitespace collapsed. WER counts word
edits over reference words; CER counts character edits over reference characters, spaces
included (jiwer's convention), both summed over the whole set (not averaged per utterance).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import jiwer


def normalize_for_scoring(text: str) -> str:
    """Lower-case, drop punctuation (keeping word-internal apostrophes), collapse whitespace."""
    text = text.lower().replace("\u2019", "'")
    chars = [" " if unicodedata.category(c).startswith("P") and c != "'" else c for c in text]
    text = "".join(chars)
    text = re.sub(r"(?<![\w])'|'(?![\w])", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


@dataclass
class ScoreReport:
    """Corpus-level error rates (fractions, not percent) and the edit counts behind them."""

    cer: float
    wer: float
    num_utts: int
    word_substitutions: int
    word_deletions: int
    word_insertions: int
    ref_words: int
    char_substitutions: int
    char_deletions: int
    char_insertions: int
    ref_chars: int
    num_missing_hyps: int = 0
    rtf: float | None = None  # decode seconds / audio seconds, when the caller timed decoding
    feature_rtf: float | None = None  # the same for feature extraction alone

    def __str__(self) -> str:
        s = f"CER {100 * self.cer:.2f}% WER {100 * self.wer:.2f}% on {self.num_utts} utts"
        if self.rtf is not None:
            s += f", RTF {self.rtf:.4f}"
        return s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_ids(refs: Mapping[str, str], hyps: Mapping[str, str]) -> list[str]:
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"hyps has {len(extra)} utterance id(s) with no reference, e.g. {extra[0]!r}")
    if not refs:
        raise ValueError("refs is empty")
    return sorted(refs)


def _edits(ref: str, hyp: str, unit: str) -> tuple[int, int, int, int]:
    """(substitutions, deletions, insertions, reference length) for one normalised pair."""
    if unit == "word":
        n_ref = len(ref.split())
        if n_ref == 0 and not hyp:
            return 0, 0, 0, 0
        o = jiwer.process_words(ref, hyp)
    else:
        n_ref = len(ref)
        if n_ref == 0 and not hyp:
            return 0, 0, 0, 0
        o = jiwer.process_characters(ref, hyp)
    return o.substitutions, o.deletions, o.insertions, n_ref


def score(refs: Mapping[str, str], hyps: Mapping[str, str]) -> ScoreReport:
    """Score ``hyps`` against ``refs`` (both id -> text). A missing hypothesis counts as empty."""
    ids = _check_ids(refs, hyps)
    ws = wd = wi = wn = cs = cd = ci = cn = 0
    for uid in ids:
        ref = normalize_for_scoring(refs[uid])
        hyp = normalize_for_scoring(hyps.get(uid, ""))
        s, d, i, n = _edits(ref, hyp, "word")
        ws, wd, wi, wn = ws + s, wd + d, wi + i, wn + n
        s, d, i, n = _edits(ref, hyp, "char")
        cs, cd, ci, cn = cs + s, cd + d, ci + i, cn + n
    return ScoreReport(
        cer=(cs + cd + ci) / max(cn, 1),
        wer=(ws + wd + wi) / max(wn, 1),
        num_utts=len(ids),
        word_substitutions=ws,
        word_deletions=wd,
        word_insertions=wi,
        ref_words=wn,
        char_substitutions=cs,
        char_deletions=cd,
        char_insertions=ci,
        ref_chars=cn,
        num_missing_hyps=sum(1 for u in ids if u not in hyps),
    )


def write_error_file(path: str | os.PathLike, refs: Mapping[str, str], hyps: Mapping[str, str]) -> None:
    """One tab-separated line per utterance, sorted by id, after a header line:

    ``id  ref  hyp  char_errors  ref_chars  word_errors  ref_words`` (normalised texts).
    """
    ids = _check_ids(refs, hyps)
    lines = ["id\tref\thyp\tchar_errors\tref_chars\tword_errors\tref_words"]
    for uid in ids:
        ref = normalize_for_scoring(refs[uid])
        hyp = normalize_for_scoring(hyps.get(uid, ""))
        cs, cd, ci, cn = _edits(ref, hyp, "char")
        ws, wd, wi, wn = _edits(ref, hyp, "word")
        lines.append(f"{uid}\t{ref}\t{hyp}\t{cs + cd + ci}\t{cn}\t{ws + wd + wi}\t{wn}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")


def git_hash(repo_dir: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` (with ``-dirty`` when tracked files changed), or 'unknown'."""
    cwd = str(repo_dir) if repo_dir is not None else str(Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def write_results(
    path: str | os.PathLike,
    report: ScoreReport,
    config: Mapping[str, Any],
    git_hash: str,
    rtf: float | None = None,
) -> None:
    """Results file: a ``#`` header recording the git hash and the config (JSON), then the
    scores as ``key: value`` lines (CER/WER in percent, then every count)."""
    lines = [
        "# otalign decoding results",
        f"# git: {git_hash}",
        f"# date_utc: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "# config: " + json.dumps(dict(config), sort_keys=True, default=str),
        f"cer_percent: {100 * report.cer:.2f}",
        f"wer_percent: {100 * report.wer:.2f}",
    ]
    rtf = report.rtf if rtf is None else rtf
    if rtf is not None:
        lines.append(f"rtf: {rtf:.5f}")
    lines += [f"{k}: {v}" for k, v in report.as_dict().items() if k not in ("cer", "wer", "rtf") and v is not None]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")


class RealTimeFactor:
    """RTF = decode seconds / audio seconds, accumulated over utterances or batches.

    >>> rtf = RealTimeFactor()
    >>> with rtf.measure(audio_s=3.2):
    ...     pass  # decode here
    """

    def __init__(self) -> None:
        self.decode_s = 0.0
        self.audio_s = 0.0

    def add(self, decode_s: float, audio_s: float) -> None:
        if decode_s < 0 or audio_s < 0:
            raise ValueError(f"decode_s and audio_s must be >= 0, got {decode_s}, {audio_s}")
        self.decode_s += decode_s
        self.audio_s += audio_s

    @contextmanager
    def measure(self, audio_s: float) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(time.perf_counter() - start, audio_s)

    @property
    def rtf(self) -> float:
        if self.audio_s == 0:
            raise ValueError("no audio accumulated: RTF is undefined")
        return self.decode_s / self.audio_s
