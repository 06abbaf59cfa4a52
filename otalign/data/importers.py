"""Importers from the field's corpus layouts into otalign manifests.

Each importer only reads the source corpus (never writes, moves or converts it): the manifest
points at the original audio files with absolute paths. Every entry is checked (audio exists, is
readable, non-empty and mono; transcript non-empty after ``normalize_text``; id unique). A bad entry
is skipped with a message naming it and counted in a summary line, or raises ``ValueError`` under
``strict=True``. Transcripts are stored normalised; the original is kept as ``raw_text``.

Layouts:

- Kaldi data dir: ``wav.scp`` (``<recording-id> <path>``), ``text`` (``<utt-id> <transcript>``),
  optional ``segments`` (``<utt-id> <recording-id> <start-s> <end-s>``) and ``utt2spk``. Piped
  commands (``... |``) and ``ark:`` entries in ``wav.scp`` are not run: they are counted skips.
- LibriSpeech: ``<root>/**/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with one
  ``<utt-id> TRANSCRIPT`` line per ``<utt-id>.flac`` beside it.
- AISHELL-1: a transcript file (``<utt-id> 词 词 ...``) and a wav tree searched recursively for
  ``<utt-id>.wav`` (``wav/<split>/<speaker>/<utt-id>.wav``); the speaker is ``S####`` of the id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from otalign.data.features import (AudioError, CorruptAudio, EmptyAudio, MultichannelAudio, TruncatedAudio,
                                   check_audio_file, load_audio)
from otalign.data.manifest import EmptyTranscript, SkipCounter, Utterance, normalize_text, write_manifest

__all__ = ["probe_audio", "import_kaldi", "import_librispeech", "import_aishell"]


def probe_audio(path: str | os.PathLike, allow_multichannel: bool = False) -> tuple[float, int]:
    """(duration in seconds, sample rate) of an audio file; ``AudioError`` when unusable.

    Reads the header with soundfile when it can (fast); otherwise decodes the file with PyAV.
    Rejects missing, empty (no samples) and multi-channel files (unless ``allow_multichannel``).
    """
    duration, sample_rate, _ = _probe(path, allow_multichannel)
    return duration, sample_rate


def _probe(path: str | os.PathLike, allow_multichannel: bool) -> tuple[float, int, int]:
    """:func:`probe_audio` plus the number of channels."""
    import soundfile as sf

    path = check_audio_file(path)
    try:
        info = sf.info(path)
    except Exception:
        samples, sample_rate = load_audio(path, allow_multichannel=allow_multichannel)
        # load_audio refused several channels or averaged them: only PyAV can say how many there were
        channels = _pyav_channels(path) if allow_multichannel else 1
        return samples.size / sample_rate, sample_rate, channels
    if info.frames <= 0:
        raise EmptyAudio(f"audio file {path} holds no samples")
    if info.channels != 1 and not allow_multichannel:
        raise MultichannelAudio(f"audio file {path} has {info.channels} channels; only mono is accepted")
    try:
        # headers can lie (truncated files): read the last block to prove the data is there
        with sf.SoundFile(path) as f:
            f.seek(max(0, info.frames - 1024))
            tail = f.read(1024, dtype="float32")
        if len(tail) == 0:
            raise TruncatedAudio(f"audio file {path} is truncated")
    except AudioError:
        raise
    except Exception as err:
        raise CorruptAudio(f"audio file {path} is corrupt ({err})") from err
    return info.frames / info.samplerate, info.samplerate, info.channels


def _pyav_channels(path: str) -> int:
    try:
        import av

        with av.open(path, format="g722" if path.endswith(".g722") else None) as container:
            return int(container.streams.audio[0].codec_context.channels)
    except Exception:  # noqa: BLE001 - load_audio read it; a count it cannot give is taken as mono
        return 1


def _read_table(path: Path, counter: SkipCounter, min_fields: int = 2) -> dict[str, str]:
    """``<key> <rest>`` lines; duplicates, short lines and lines that are not UTF-8 are counted skips."""
    table: dict[str, str] = {}
    with open(path, "rb") as f:  # bytes: one line that is not UTF-8 must not abort the import
        for line_no, raw_line in enumerate(f, start=1):
            try:
                line = raw_line.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                key = raw_line.split(maxsplit=1)[0].decode("utf-8", "replace") if raw_line.split() else ""
                counter.skip(f"{path.name} line {line_no}" + (f" (utterance {key!r})" if key else ""),
                             f"not UTF-8 (byte 0x{raw_line[err.start]:02x} at column {err.start + 1})", "bad encoding")
                continue
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 and min_fields >= 2:
                # a key with no value (e.g. an empty transcript)
                counter.skip(f"{path.name} line {line_no} (utterance {parts[0]!r})", "no value after the id",
                             EmptyTranscript.category if path.name == "text" else "malformed line")
                continue
            key = parts[0]
            if key in table:
                counter.skip(f"{path.name} line {line_no} (utterance {key!r})", f"duplicate id {key!r}", "duplicate id")
                continue
            table[key] = parts[1] if len(parts) > 1 else ""
    return table


def _make_utterance(utt_id: str, audio_path: str, raw_text: str, speaker: str, counter: SkipCounter,
                    allow_multichannel: bool, offset: float = 0.0, end: float | None = None) -> Utterance | None:
    where = f"utterance {utt_id!r}"
    text = normalize_text(raw_text)
    if not text:
        counter.skip(where, f"transcript {raw_text!r} is empty after normalisation", EmptyTranscript.category)
        return None
    try:
        duration, sample_rate, channels = _probe(audio_path, allow_multichannel)
    except AudioError as err:
        counter.skip(where, str(err), err.category)  # classified by type, not by message text
        return None
    if end is not None:
        if not (0.0 <= offset < end <= duration + 0.01):
            counter.skip(where, f"segment [{offset}, {end}] is outside the recording ({duration:.3f} s)",
                         "bad segment")
            return None
        duration = end - offset
    # A multichannel file accepted under allow_multichannel is recorded as such, so that training
    # and decoding read it the same way (the mean of its channels) instead of refusing it.
    extra: dict[str, Any] = {"raw_text": raw_text}
    if channels > 1:
        extra["channels"] = channels
    return Utterance(id=utt_id, audio_filepath=str(Path(audio_path).resolve()), duration=duration, text=text,
                     speaker=speaker, sample_rate=sample_rate, offset=offset, downmix=channels > 1, extra=extra)


def _finish(counter: SkipCounter, utterances: list[Utterance], out_manifest: str | os.PathLike) -> dict[str, Any]:
    counter.kept = len(utterances)
    if not utterances:  # an empty manifest is never written: it would train or score on nothing
        details = ", ".join(f"{k}: {v}" for k, v in sorted(counter.counts.items())) or "nothing found"
        raise ValueError(f"{counter.source}: every utterance was skipped ({len(counter.skipped)} skipped; "
                         f"{details}); no manifest written to {out_manifest}")
    write_manifest(out_manifest, utterances)
    summary_line = counter.summary()
    print(summary_line)
    return {"manifest": str(out_manifest), "kept": len(utterances), "skipped": len(counter.skipped),
            "skip_counts": dict(counter.counts), "skipped_entries": list(counter.skipped),
            "hours": round(sum(u.duration for u in utterances) / 3600.0, 4), "summary": summary_line}


def import_kaldi(data_dir: str | os.PathLike, out_manifest: str | os.PathLike, strict: bool = False,
                 allow_multichannel: bool = False) -> dict[str, Any]:
    """Kaldi data dir -> manifest (see module doc). Returns a summary dict and prints its line."""
    data_dir = Path(data_dir)
    for required in ("wav.scp", "text"):
        if not (data_dir / required).is_file():
            raise ValueError(f"Kaldi data dir {data_dir} has no {required}")
    counter = SkipCounter(f"kaldi {data_dir}", strict=strict)
    wav_scp = _read_table(data_dir / "wav.scp", counter)
    texts = _read_table(data_dir / "text", counter, min_fields=1)
    utt2spk = _read_table(data_dir / "utt2spk", counter) if (data_dir / "utt2spk").is_file() else {}
    segments: dict[str, tuple[str, float, float]] = {}
    if (data_dir / "segments").is_file():
        for key, value in _read_table(data_dir / "segments", counter).items():
            fields = value.split()
            try:
                segments[key] = (fields[0], float(fields[1]), float(fields[2]))
            except (IndexError, ValueError):
                counter.skip(f"segments (utterance {key!r})", f"malformed segment {value!r}", "bad segment")
    utterances = []
    for utt_id, raw_text in texts.items():
        where = f"utterance {utt_id!r}"
        if not normalize_text(raw_text):
            counter.skip(where, f"transcript {raw_text!r} is empty after normalisation", EmptyTranscript.category)
            continue
        recording, start, end = segments[utt_id] if utt_id in segments else (utt_id, 0.0, None)
        if (data_dir / "segments").is_file() and utt_id not in segments:
            counter.skip(where, "not listed in segments", "missing segment")
            continue
        if recording not in wav_scp:
            counter.skip(where, f"recording {recording!r} is not in wav.scp", "missing audio")
            continue
        location = wav_scp[recording].strip()
        if location.endswith("|") or location.startswith("ark:") or ".ark:" in location:
            counter.skip(where, f"wav.scp entry {location!r} is a command or an archive; only file paths "
                                "are supported (extract the audio to files first)", "unsupported wav.scp entry")
            continue
        audio_path = location if os.path.isabs(location) else str(data_dir / location)
        utt = _make_utterance(utt_id, audio_path, raw_text, utt2spk.get(utt_id, ""), counter, allow_multichannel,
                              start, end)
        if utt is not None:
            utterances.append(utt)
    return _finish(counter, utterances, out_manifest)


def import_librispeech(root: str | os.PathLike, out_manifest: str | os.PathLike, strict: bool = False,
                       allow_multichannel: bool = False) -> dict[str, Any]:
    """LibriSpeech tree -> manifest (see module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"LibriSpeech root {root} is not a directory")
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise ValueError(f"no *.trans.txt files under {root}")
    counter = SkipCounter(f"librispeech {root}", strict=strict)
    utterances = []
    seen: set[str] = set()
    for trans in transcripts:
        table = _read_table(trans, counter, min_fields=1)
        for utt_id, raw_text in table.items():
            if utt_id in seen:
                counter.skip(f"{trans} (utterance {utt_id!r})", f"duplicate id {utt_id!r}", "duplicate id")
                continue
            seen.add(utt_id)
            utt = _make_utterance(utt_id, str(trans.parent / f"{utt_id}.flac"), raw_text, utt_id.split("-")[0],
                                  counter, allow_multichannel)
            if utt is not None:
                utterances.append(utt)
    return _finish(counter, utterances, out_manifest)


def import_aishell(transcript_file: str | os.PathLike, wav_root: str | os.PathLike, out_manifest: str | os.PathLike,
                   strict: bool = False, allow_multichannel: bool = False) -> dict[str, Any]:
    """AISHELL-1 transcript + wav tree -> manifest for the utterances whose wav is under ``wav_root``.

    Transcript lines whose wav is not under ``wav_root`` are not counted as skips (the transcript
    file covers train, dev and test; point ``wav_root`` at one split). Wavs under ``wav_root``
    without a transcript line are counted as ``no transcript``.
    """
    transcript_file, wav_root = Path(transcript_file), Path(wav_root)
    if not transcript_file.is_file():
        raise ValueError(f"AISHELL transcript file {transcript_file} does not exist")
    if not wav_root.is_dir():
        raise ValueError(f"AISHELL wav root {wav_root} is not a directory")
    counter = SkipCounter(f"aishell {wav_root}", strict=strict)
    texts = _read_table(transcript_file, counter, min_fields=1)
    wavs = {p.stem: p for p in sorted(wav_root.rglob("*.wav"))}
    utterances = []
    for utt_id, wav in wavs.items():
        if utt_id not in texts:
            counter.skip(f"utterance {utt_id!r}", f"{wav} has no line in {transcript_file.name}", "no transcript")
            continue
        speaker = utt_id[6:11] if len(utt_id) >= 11 else ""
        utt = _make_utterance(utt_id, str(wav), texts[utt_id], speaker, counter, allow_multichannel)
        if utt is not None:
            utterances.append(utt)
    return _finish(counter, utterances, out_manifest)
