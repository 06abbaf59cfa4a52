"""Real recorded speech: the Asterisk core prompts (one US female speaker, ~25 min, 568 prompts).

Source: Debian ``asterisk-core-sounds-en-g722`` (16 kHz G.722, ``/usr/share/asterisk/sounds/en``,
a link to ``en_US_f_Allison``) or ``-wav`` (8 kHz, resampled to 16 kHz), with transcripts in
``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz`` (``name: text`` lines, ``name``
may contain a folder such as ``digits/1``).

``prepare_asterisk`` decodes every prompt with a usable transcript to a 16 kHz mono PCM16 wav under
``out_dir/wav`` and writes ``train.jsonl`` and ``test.jsonl``. Skipped (counted, or an error under
``strict``): prompts with no transcript line, bracketed descriptions of non-speech sounds
(``[ascending tones]``), transcripts with numbers of 3+ digits or decimals (their spoken form is
unknown: "1234" may be read "one two three four" or "twelve thirty four"; numbers 0-99 are spelled
out, "press 1" -> "press one"), transcripts that normalise to nothing, and audio
that is unreadable or empty.

Split (fixed, documented, seed-free): a prompt is in test when
``int(sha1(name).hexdigest(), 16) % 10 == 0`` (about 10%), where ``name`` is its transcript key,
e.g. ``vm-goodbye`` or ``digits/7``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from otalign.data.features import AudioError, load_audio, resample
from otalign.data.manifest import EmptyTranscript, SkipCounter, Utterance, normalize_text, write_manifest

__all__ = ["DEFAULT_SOUNDS_DIRS", "TRANSCRIPTS_FILE", "is_test_prompt", "read_transcripts", "find_sounds_dir",
           "prepare_asterisk"]

DEFAULT_SOUNDS_DIRS = ("/usr/share/asterisk/sounds/en", "/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS_FILE = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SPEAKER = "asterisk-en_US_f_Allison"


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spell_small_numbers(text: str) -> str | None:
    """Spell numbers 0-99 as words ("press 1" -> "press one"); None if a larger number remains."""
    def spell(match: re.Match) -> str:
        n = int(match.group(0))
        if n < 20:
            return f" {_ONES[n]} "
        return f" {_TENS[n // 10]}" + (f" {_ONES[n % 10]} " if n % 10 else " ")

    spelled = re.sub(r"(?<![\d.])\d{1,2}(?!\d|\.\d)", spell, text)
    return None if re.search(r"\d", spelled) else spelled


def is_test_prompt(name: str) -> bool:
    """The fixed split: ``sha1(name) % 10 == 0`` is test (about 10% of prompts)."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % 10 == 0


def read_transcripts(path: str | os.PathLike = TRANSCRIPTS_FILE) -> dict[str, str]:
    """``name -> text`` from the (optionally gzipped) ``name: text`` file; ``;`` lines are comments."""
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            out.setdefault(name.strip(), text.strip())
    return out


def find_sounds_dir(sounds_dir: str | os.PathLike | None = None) -> Path:
    if sounds_dir is not None:
        if not Path(sounds_dir).is_dir():
            raise ValueError(f"sounds_dir {sounds_dir} is not a directory")
        return Path(sounds_dir)
    for candidate in DEFAULT_SOUNDS_DIRS:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise ValueError("Asterisk English prompts not found (Debian: apt-get install asterisk-core-sounds-en-g722)")


def _audio_file(sounds_dir: Path, name: str) -> Path | None:
    for extension in (".g722", ".wav"):
        candidate = sounds_dir / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return None


def prepare_asterisk(out_dir: str | os.PathLike, *, sounds_dir: str | os.PathLike | None = None,
                     transcripts: str | os.PathLike = TRANSCRIPTS_FILE, strict: bool = False,
                     limit: int | None = None) -> dict[str, Any]:
    """Build 16 kHz wavs and ``train.jsonl``/``test.jsonl`` under ``out_dir`` (see module doc).

    ``limit`` keeps only the first ``limit`` prompts in name order (for tests). Returns a summary
    (counts, hours, skip reasons) and prints its line. The source files are only read.
    """
    sounds_dir = find_sounds_dir(sounds_dir)
    if not Path(transcripts).is_file():
        raise ValueError(f"Asterisk transcripts {transcripts} not found (Debian: asterisk-core-sounds-en)")
    out_dir = Path(out_dir)
    table = read_transcripts(transcripts)
    # every prompt on disk (g722 preferred, else 8 kHz wav), by transcript-style name "dir/stem"
    names = sorted({p.relative_to(sounds_dir).with_suffix("").as_posix()
                    for p in sounds_dir.rglob("*") if p.suffix in (".g722", ".wav") and p.is_file()})
    if limit is not None:
        names = names[:limit]
    counter = SkipCounter(f"asterisk {sounds_dir}", strict=strict)
    splits: dict[str, list[Utterance]] = {"train": [], "test": []}
    for name in names:
        where = f"prompt {name!r}"
        raw_text = table.get(name)
        if raw_text is None:
            counter.skip(where, "no transcript line", "no transcript")
            continue
        if re.search(r"\[.*\]", raw_text):
            counter.skip(where, f"transcript {raw_text!r} describes a non-speech sound", "non-speech prompt")
            continue
        spelled = _spell_small_numbers(raw_text)
        if spelled is None:
            counter.skip(where, f"transcript {raw_text!r} has numbers whose spoken form is unknown", "digits")
            continue
        text = normalize_text(spelled)
        if not text:
            counter.skip(where, f"transcript {raw_text!r} is empty after normalisation", EmptyTranscript.category)
            continue
        source = _audio_file(sounds_dir, name)
        try:
            samples, sample_rate = load_audio(source)
        except AudioError as err:
            counter.skip(where, str(err), err.category)  # classified by type, as the other importers
            continue
        samples16k = resample(samples, sample_rate, 16000)
        split = "test" if is_test_prompt(name) else "train"
        utt_id = "asterisk-" + name.replace("/", "-")
        wav_path = out_dir / "wav" / f"{utt_id}.wav"
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav_path, np.clip(samples16k, -1.0, 1.0), 16000, subtype="PCM_16")
        splits[split].append(Utterance(id=utt_id, audio_filepath=str(wav_path.resolve()),
                                       duration=samples16k.size / 16000, text=text, speaker=SPEAKER,
                                       sample_rate=16000, extra={"raw_text": raw_text, "source": str(source)}))
        counter.kept += 1
    if counter.kept == 0:  # as the other importers: an empty manifest would train or score on nothing
        details = ", ".join(f"{k}: {v}" for k, v in sorted(counter.counts.items())) or "no prompt found"
        raise ValueError(f"{counter.source}: every prompt was skipped ({len(counter.skipped)} skipped; {details}); "
                         f"no manifest written to {out_dir}")
    for split, utterances in splits.items():
        write_manifest(out_dir / f"{split}.jsonl", utterances)
    line = counter.summary()
    print(line)
    return {"out_dir": str(out_dir), "sounds_dir": str(sounds_dir),
            "counts": {k: len(v) for k, v in splits.items()},
            "hours": {k: round(sum(u.duration for u in v) / 3600, 4) for k, v in splits.items()},
            "skipped": len(counter.skipped), "skip_counts": dict(counter.counts), "summary": line}
