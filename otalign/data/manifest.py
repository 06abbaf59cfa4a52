"""The one manifest format of otalign: JSONL, one utterance per line.

Each line is a JSON object close to NeMo's (``audio_filepath``, ``duration``, ``text``) with WeNet's
``key`` available as ``id``::

    {"id": "syn-000001", "audio_filepath": "wav/syn-000001.wav", "duration": 3.21,
     "text": "hello world", "speaker": "en-us+m3", "sample_rate": 16000,
     "alignment": {"word": [{"symbol": "hello", "start": 0.52, "duration": 0.39}, ...]},
     "words": [{"word": "hello", "start": 0.52, "end": 0.91}, ...],
     "nonspeech": [{"kind": "silence", "start": 0.0, "end": 0.52}],
     "noise": {"kind": "pink", "snr_db": 15.0}}

Required: ``id``, ``audio_filepath``, ``duration`` (seconds, > 0) and ``text``.
Optional: ``speaker`` (default ``""``), ``sample_rate`` (of the audio file, default 16000),
``downmix`` (``true``: the audio file has several channels and is read as their mean, as
``otalign prepare --allow-multichannel`` accepted it; without it a multichannel file is refused),
``offset`` (seconds into the audio file where the utterance starts, as in NeMo; used for Kaldi
``segments``), ``alignment.word`` (ground-truth word spans in seconds, relative to the utterance
start, as Lhotse's ``SupervisionSegment.alignment["word"]``: ``AlignmentItem`` s as dicts
``{"symbol", "start", "duration"}`` or as Lhotse >= 1.8's lists ``[symbol, start, duration]``;
other tiers such as ``"phone"`` are kept as they are), the legacy ``words``
(``{"word", "start", "end"}``: still read, and still written beside ``alignment`` for one version,
see ``WRITE_LEGACY_WORDS``; either key gives ``Utterance.words``), ``nonspeech`` (annotated silence/noise-only segments with no words) and ``noise`` (background noise
over the whole utterance). Any other key is kept in ``Utterance.extra`` and written back unchanged.

Relative ``audio_filepath`` values resolve against the manifest's folder. ``read_manifest`` returns
utterances whose ``audio_filepath`` is absolute; ``write_manifest`` writes paths relative to the
manifest's folder when the audio lies below it (so a corpus folder can be moved as a whole).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = [
    "WordSpan",
    "NonSpeechSpan",
    "NoiseInfo",
    "Utterance",
    "ManifestReadResult",
    "SkipCounter",
    "ManifestEntryError",
    "NotAJSONObject",
    "EmptyTranscript",
    "SkippedEntry",
    "normalize_text",
    "read_manifest",
    "write_manifest",
]

NONSPEECH_KINDS = ("silence", "noise")
# Words may run a little past the end of the audio through rounding of sample positions.
_TIME_TOLERANCE_S = 0.02
# Word spans given both as alignment.word and as legacy words must agree to this (seconds).
_AGREEMENT_S = 1e-6
# The writer also writes the legacy "words" key beside "alignment" for one version: code that reads
# Utterance.to_dict()["words"] (otalign.align.synthetic/sweep) and older otalign readers keep working.
WRITE_LEGACY_WORDS = True

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
# CJK ideographs are kept (one token per character, spaces around them dropped) so that AISHELL
# transcripts survive; English text has none, so for it the vocabulary is a-z, ' and space.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_NOT_LETTER_OR_APOSTROPHE = re.compile(f"[^a-z'{_CJK}]+")
_SPACE_NEXT_TO_CJK = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")
# An apostrophe that is not between two letters is a quotation mark, not part of a word.
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def normalize_text(text: str) -> str:
    """Normalise a transcript: lowercase ASCII letters, apostrophes inside words, single spaces.

    Accents are stripped (``café`` -> ``cafe``), typographic apostrophes become ``'``, anything
    else (digits, punctuation, hyphens, other scripts) becomes a word break, and quotes that are not
    between two letters are dropped (``'hello'`` -> ``hello``, ``don't`` stays). The same function
    is used for every corpus, so the vocabulary of every English manifest is ``a-z``, ``'`` and
    space. CJK ideographs (AISHELL) are kept, without the spaces between them (``"而 对 楼市"`` ->
    ``"而对楼市"``). Returns ``""`` when nothing is left.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    letters = _NOT_LETTER_OR_APOSTROPHE.sub(" ", ascii_text)
    letters = _STRAY_APOSTROPHE.sub(" ", letters)
    return _SPACE_NEXT_TO_CJK.sub("", " ".join(letters.split()))


class ManifestEntryError(ValueError):
    """A manifest entry that is not a valid utterance. ``category`` is its skip-count label:
    readers classify a skip by the error's type, never by its message."""

    category = "invalid entry"


class NotAJSONObject(ManifestEntryError):
    """The line is valid JSON but not an object (e.g. one line of a JSON array)."""


class EmptyTranscript(ManifestEntryError):
    """The transcript is empty after ``normalize_text``."""

    category = "empty transcript"


class SkippedEntry(ValueError):
    """Raised instead of a skip under ``strict=True``: the message names the source and the entry."""

    def __init__(self, message: str, category: str):
        super().__init__(message)
        self.category = category


@dataclass
class WordSpan:
    """A word and its time span in seconds, relative to the utterance start."""

    word: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        """The legacy ``words`` item: ``{"word", "start", "end"}``."""
        return {"word": self.word, "start": round(self.start, 4), "end": round(self.end, 4)}

    def to_alignment_item(self) -> dict[str, Any]:
        """Lhotse's ``AlignmentItem`` as a dict, keys in its field order: ``{"symbol", "start", "duration"}``.

        The duration is taken between the rounded times, so that the reader's
        ``end = round(start + duration, 8)`` gives back exactly the rounded end.
        """
        start, end = round(self.start, 4), round(self.end, 4)
        return {"symbol": self.word, "start": start, "duration": round(end - start, 4)}


@dataclass
class NonSpeechSpan:
    """A segment with no words: ``kind`` is ``"silence"`` or ``"noise"`` (noise-only).

    ``source`` optionally names what the segment is made of (``"white"``, ``"pink"``, ``"babble"``).
    """

    kind: str
    start: float
    end: float
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "start": round(self.start, 4), "end": round(self.end, 4)}
        if self.source is not None:
            out["source"] = self.source
        return out


@dataclass
class NoiseInfo:
    """Background noise mixed over the whole utterance at ``snr_db`` (speech power over word spans)."""

    kind: str
    snr_db: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "snr_db": round(self.snr_db, 2)}


@dataclass
class Utterance:
    """One manifest line. ``duration`` and all spans are in seconds."""

    id: str
    audio_filepath: str
    duration: float
    text: str
    speaker: str = ""
    sample_rate: int = 16000
    offset: float = 0.0
    words: list[WordSpan] | None = None
    nonspeech: list[NonSpeechSpan] | None = None
    noise: NoiseInfo | None = None
    downmix: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, manifest_dir: Path | None = None) -> dict[str, Any]:
        path = self.audio_filepath
        if manifest_dir is not None and os.path.isabs(path):
            try:
                path = Path(path).resolve().relative_to(manifest_dir.resolve()).as_posix()
            except ValueError:
                pass  # audio outside the manifest folder stays absolute
        out: dict[str, Any] = {
            "id": self.id,
            "audio_filepath": path,
            "duration": round(self.duration, 4),
            "text": self.text,
            "speaker": self.speaker,
            "sample_rate": self.sample_rate,
        }
        if self.offset:
            out["offset"] = round(self.offset, 4)
        if self.downmix:
            out["downmix"] = True
        extra = dict(self.extra)
        alignment = dict(extra.pop("alignment", None) or {})  # tiers other than "word" read from a manifest
        if self.words is not None:
            alignment["word"] = [w.to_alignment_item() for w in self.words]
        if alignment:
            out["alignment"] = alignment
        if self.words is not None and WRITE_LEGACY_WORDS:
            out["words"] = [w.to_dict() for w in self.words]
        if self.nonspeech is not None:
            out["nonspeech"] = [s.to_dict() for s in self.nonspeech]
        if self.noise is not None:
            out["noise"] = self.noise.to_dict()
        out.update(extra)
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any], manifest_dir: Path | None = None) -> "Utterance":
        """Build and validate an utterance; raises ``ManifestEntryError`` describing the first problem."""
        if not isinstance(record, dict):
            raise NotAJSONObject("line is not a JSON object")
        utt_id = record.get("id", record.get("key"))
        if not isinstance(utt_id, str) or not utt_id:
            raise ManifestEntryError("missing or empty 'id'")
        for key in ("audio_filepath", "duration", "text"):
            if key not in record:
                raise ManifestEntryError(f"utterance {utt_id!r}: missing required field {key!r}")
        path = record["audio_filepath"]
        if not isinstance(path, str) or not path:
            raise ManifestEntryError(f"utterance {utt_id!r}: 'audio_filepath' must be a non-empty string")
        if manifest_dir is not None and not os.path.isabs(path):
            path = str((manifest_dir / path).resolve())
        duration = record["duration"]
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0:
            raise ManifestEntryError(f"utterance {utt_id!r}: 'duration' must be a positive number, got {duration!r}")
        text = record["text"]
        if not isinstance(text, str):
            raise ManifestEntryError(f"utterance {utt_id!r}: 'text' must be a string")
        if not normalize_text(text):
            raise EmptyTranscript(f"utterance {utt_id!r}: transcript {text!r} is empty after normalisation")
        sample_rate = record.get("sample_rate", 16000)
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ManifestEntryError(f"utterance {utt_id!r}: 'sample_rate' must be a positive integer")
        downmix = record.get("downmix", False)
        if not isinstance(downmix, bool):
            raise ManifestEntryError(f"utterance {utt_id!r}: 'downmix' must be true or false, got {downmix!r}")
        offset = float(record.get("offset", 0.0))
        if offset < 0:
            raise ManifestEntryError(f"utterance {utt_id!r}: 'offset' must be >= 0")
        limit = float(duration) + _TIME_TOLERANCE_S

        words = _parse_alignment(record, utt_id)
        if words is not None:
            previous_start = -1.0
            for span in words:
                if not (0.0 <= span.start <= span.end <= limit):
                    raise ManifestEntryError(
                        f"utterance {utt_id!r}: word span {span.word!r} [{span.start}, {span.end}] "
                        f"is not inside [0, duration={duration}]"
                    )
                if span.start < previous_start:
                    raise ManifestEntryError(f"utterance {utt_id!r}: word spans are not sorted by start")
                previous_start = span.start
        nonspeech = None
        if record.get("nonspeech") is not None:
            nonspeech = []
            for s in record["nonspeech"]:
                try:
                    span = NonSpeechSpan(str(s["kind"]), float(s["start"]), float(s["end"]), s.get("source"))
                except (KeyError, TypeError, ValueError) as err:
                    raise ManifestEntryError(f"utterance {utt_id!r}: malformed nonspeech span {s!r}") from err
                if span.kind not in NONSPEECH_KINDS:
                    raise ManifestEntryError(
                        f"utterance {utt_id!r}: nonspeech kind must be one of {NONSPEECH_KINDS}, got {span.kind!r}"
                    )
                if not (0.0 <= span.start <= span.end <= limit):
                    raise ManifestEntryError(f"utterance {utt_id!r}: nonspeech span [{span.start}, {span.end}] out of range")
                nonspeech.append(span)
        noise = None
        if record.get("noise") is not None:
            try:
                noise = NoiseInfo(str(record["noise"]["kind"]), float(record["noise"]["snr_db"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ManifestEntryError(f"utterance {utt_id!r}: malformed noise {record['noise']!r}") from err
        known = {"id", "key", "audio_filepath", "duration", "text", "speaker", "sample_rate", "offset",
                 "words", "alignment", "nonspeech", "noise", "downmix"}
        extra = {k: v for k, v in record.items() if k not in known}
        other_alignments = {k: v for k, v in (record.get("alignment") or {}).items() if k != "word"}
        if other_alignments:  # e.g. Lhotse's "phone" tier: kept, and written back beside "word"
            extra["alignment"] = other_alignments
        return cls(
            id=utt_id,
            audio_filepath=path,
            duration=float(duration),
            text=text,
            speaker=str(record.get("speaker", "")),
            sample_rate=sample_rate,
            offset=offset,
            words=words,
            nonspeech=nonspeech,
            noise=noise,
            downmix=downmix,
            extra=extra,
        )


def _parse_alignment(record: dict[str, Any], utt_id: str) -> list[WordSpan] | None:
    """The word spans of a record: Lhotse's ``alignment.word`` and/or the legacy ``words``.

    ``alignment.word`` items are Lhotse ``AlignmentItem`` s, as dicts (``{"symbol", "start",
    "duration"[, "score"]}``, what otalign writes) or as lists (``[symbol, start, duration(, score)]``,
    what Lhotse >= 1.8 writes); ``end = round(start + duration, 8)`` as in Lhotse, and a score is
    not kept. When both keys are present they must agree.
    """
    from_alignment = None
    alignment = record.get("alignment")
    if alignment is not None:
        if not isinstance(alignment, dict):
            raise ManifestEntryError(f"utterance {utt_id!r}: 'alignment' must be an object of tiers "
                                     f"({{\"word\": [...]}}), got {alignment!r}")
        items = alignment.get("word")
        if items is not None:
            if not isinstance(items, list):
                raise ManifestEntryError(f"utterance {utt_id!r}: 'alignment.word' must be a list, got {items!r}")
            from_alignment = [_alignment_item(item, utt_id) for item in items]
    from_words = None
    if record.get("words") is not None:
        from_words = []
        for w in record["words"]:
            try:
                from_words.append(WordSpan(str(w["word"]), float(w["start"]), float(w["end"])))
            except (KeyError, TypeError, ValueError) as err:
                raise ManifestEntryError(f"utterance {utt_id!r}: malformed word span {w!r}") from err
    if from_alignment is not None and from_words is not None:
        agree = len(from_alignment) == len(from_words) and all(
            a.word == b.word and abs(a.start - b.start) <= _AGREEMENT_S and abs(a.end - b.end) <= _AGREEMENT_S
            for a, b in zip(from_alignment, from_words))
        if not agree:
            raise ManifestEntryError(f"utterance {utt_id!r}: 'alignment.word' and the legacy 'words' disagree; "
                                     "keep one of them")
    return from_alignment if from_alignment is not None else from_words


def _alignment_item(item: Any, utt_id: str) -> WordSpan:
    if isinstance(item, dict):
        fields = (item.get("symbol"), item.get("start"), item.get("duration"))
        ok = set(item) <= {"symbol", "start", "duration", "score"}
    else:
        fields = tuple(item)[:3] if isinstance(item, (list, tuple)) and len(item) in (3, 4) else (None, None, None)
        ok = True
    symbol, start, duration = fields
    try:
        if not isinstance(symbol, str) or isinstance(start, bool) or isinstance(duration, bool) or not ok:
            raise TypeError(symbol)
        start, duration = float(start), float(duration)
    except (TypeError, ValueError) as err:
        raise ManifestEntryError(f"utterance {utt_id!r}: malformed alignment.word item {item!r} (expected "
                                 "{\"symbol\": str, \"start\": s, \"duration\": s} or [symbol, start, duration])"
                                 ) from err
    if not duration >= 0:
        raise ManifestEntryError(f"utterance {utt_id!r}: alignment.word item {item!r} has a negative duration")
    return WordSpan(symbol, start, round(start + duration, 8))


class SkipCounter:
    """Counts skipped entries by reason and prints one summary line.

    Every skip prints a message naming the source (file and line, or utterance id); under
    ``strict=True`` the first problem raises ``ValueError`` with that message instead.
    """

    def __init__(self, source: str, strict: bool = False, verbose: bool = True):
        self.source = source
        self.strict = strict
        self.verbose = verbose
        self.kept = 0
        self.skipped: list[tuple[str, str]] = []  # (where, reason)
        self.counts: dict[str, int] = {}

    def skip(self, where: str, reason: str, category: str) -> None:
        message = f"{self.source}: {where}: {reason}"
        if self.strict:
            raise SkippedEntry(message, category)
        if self.verbose:
            print(f"skip: {message}")
        self.skipped.append((where, reason))
        self.counts[category] = self.counts.get(category, 0) + 1

    def summary(self) -> str:
        details = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        line = f"{self.source}: kept {self.kept}, skipped {len(self.skipped)}"
        return f"{line} ({details})" if details else line


@dataclass
class ManifestReadResult:
    """What ``read_manifest`` found: the valid utterances and a record of what was skipped.

    Behaves like a list of utterances (``len``, iteration, indexing).
    """

    path: Path
    utterances: list[Utterance]
    skipped: list[tuple[str, str]]  # (where, reason)
    skip_counts: dict[str, int]
    summary: str

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]


def read_manifest(path: str | os.PathLike, strict: bool = False, check_files: bool = False,
                  verbose: bool = True) -> ManifestReadResult:
    """Read and validate a JSONL manifest.

    Invalid lines (bad JSON, missing fields, non-positive duration, transcript that normalises to
    nothing, malformed spans, duplicate ids, and with ``check_files`` a missing audio file) are
    skipped with a message naming the file, line and utterance id, and counted in ``summary``;
    with ``strict=True`` the first one raises ``ValueError``. Blank lines are ignored.

    A path that is missing or a directory, and a manifest with no usable utterance (empty, every
    line skipped: e.g. a JSON array or a CSV file) raise ``ValueError`` naming the file (and the
    first skipped line with its reason).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"manifest {path} is a directory, not a JSONL file (one JSON object per line)")
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist")
    manifest_dir = path.parent.resolve()
    counter = SkipCounter(str(path), strict=strict, verbose=verbose)
    utterances: list[Utterance] = []
    seen: set[str] = set()
    not_jsonl: set[str] = set()  # lines skipped as not JSON, or JSON but not an object
    with open(path, "rb") as f:  # bytes: one line that is not UTF-8 must not abort the others
        for line_no, raw_line in enumerate(f, start=1):
            where = f"line {line_no}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                counter.skip(where, f"not UTF-8 (byte 0x{raw_line[err.start]:02x} at column {err.start + 1})", "bad encoding")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                counter.skip(where, f"invalid JSON ({err.msg})", "invalid json")
                not_jsonl.add(where)
                continue
            if isinstance(record, dict) and isinstance(record.get("id", record.get("key")), str):
                where = f"line {line_no} (utterance {record.get('id', record.get('key'))!r})"
            try:
                utt = Utterance.from_dict(record, manifest_dir)
            except ManifestEntryError as err:
                counter.skip(where, str(err), err.category)
                if isinstance(err, NotAJSONObject):
                    not_jsonl.add(where)
                continue
            except ValueError as err:  # a field that float() refuses, e.g. "offset": "soon"
                counter.skip(where, str(err), ManifestEntryError.category)
                continue
            if utt.id in seen:
                counter.skip(where, f"duplicate id {utt.id!r}", "duplicate id")
                continue
            if check_files and not os.path.isfile(utt.audio_filepath):
                counter.skip(where, f"audio file {utt.audio_filepath} does not exist", "missing audio")
                continue
            seen.add(utt.id)
            utterances.append(utt)
            counter.kept += 1
    if not utterances:
        # Nothing to train or score on: never an empty list that fails later naming no file.
        if not counter.skipped:
            raise ValueError(f"manifest {path} holds no utterance (it is empty)")
        where, reason = counter.skipped[0]
        # the file is no JSONL at all when every skip is a bad entry and the first is not JSON or not an object
        hint = ("; is it JSONL (one JSON object per line, not a JSON array or CSV)?"
                if counter.counts.get("invalid json", 0) + counter.counts.get("invalid entry", 0) == len(counter.skipped)
                and where in not_jsonl else "")
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(counter.counts.items()))
        raise ValueError(f"manifest {path} holds no usable utterance: all {len(counter.skipped)} line(s) were "
                         f"skipped ({counts}; first: {where}: {reason}){hint}")
    return ManifestReadResult(path, utterances, counter.skipped, dict(counter.counts), counter.summary())


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance | dict[str, Any]]) -> int:
    """Write utterances as JSONL (paths below the manifest folder become relative).

    Raises ``ValueError`` on duplicate ids. Writes to a temporary file and renames it, so a crash
    never leaves a half-written manifest. Returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest_dir = path.parent.resolve()
    seen: set[str] = set()
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            record = utt.to_dict(manifest_dir) if isinstance(utt, Utterance) else dict(utt)
            if record["id"] in seen:
                tmp.unlink(missing_ok=True)
                raise ValueError(f"write_manifest({path}): duplicate id {record['id']!r}")
            seen.add(record["id"])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count
