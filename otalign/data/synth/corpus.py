"""The corpus: jobs, splits, worker shards and manifests (see the package doc for the whole).

Splits and disjointness:

- Text: the test and dev sentences are drawn first and are never used in train; train cycles
  through the remaining ones (with other voices) when more utterances are asked for than there
  are sentences (``summary["train_text_reuse"]``).
- Voices: ``ACCENTS`` x ``VARIANTS`` (8 x 12 = 96). A fixed 1/6 of the pairs
  (``(accent_index + 3 * variant_index) % 6 == 0``, 16 pairs) are held out for test; train and dev
  use the other 80.
- ``test_clean`` and ``test_noisy`` hold the *same* sentences spoken by the *same* voices:
  ``test_noisy`` is ``test_clean`` with the heavy imbalance of ``ImbalanceConfig.heavy()`` applied,
  so the two can be compared utterance by utterance.

Determinism: everything is a function of ``seed``. Each utterance draws from
``np.random.default_rng([seed, split, index])``. eSpeak itself keeps state across calls (the
pitch-flutter index in its wave generator is a C static), so the same sentence spoken twice in one
process can differ by a few pitch periods (~5-15 ms in word timings). Utterances are therefore
synthesised in fixed shards of ``SHARD_SIZE``, each in a fresh process, which makes the output
independent of ``jobs`` and scheduling; the word starts are taken from the events of the very
synthesis that produced the audio, and recorded in ``synth.event_samples`` (22050 Hz).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from otalign.data.manifest import NoiseInfo, NonSpeechSpan, Utterance, WordSpan, write_manifest
from otalign.data.synth.imbalance import BabbleBank, ImbalanceConfig, impose_imbalance
from otalign.data.synth.text import FORTUNES_DIR, load_fortune_sentences
from otalign.data.synth.timing import (ACCENTS, PITCH_RANGE, PITCH_VARIATION_RANGE, RATE_WPM_RANGE, SAMPLE_RATE,
                                       VARIANTS, synthesize_utterance)

__all__ = ["SIZES", "SHARD_SIZE", "SPLIT_CODES", "SynthFolderBusy", "voice_pairs", "synthesize_corpus"]

# Utterance counts per size: train, dev, test (test_clean and test_noisy each hold `test`).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (40, 8, 8),
    "demo": (1500, 150, 150),
    "bench": (3000, 300, 300),
}
SHARD_SIZE = 50
# The random stream of an utterance is default_rng([seed, SPLIT_CODES[split], index]); stream 3
# is the babble bank's (imbalance.BABBLE_STREAM).
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}
Voice = tuple[str, str]  # (accent label, variant)


def voice_pairs() -> tuple[list[Voice], list[Voice]]:
    """(train/dev pairs, held-out test pairs) of (accent label, variant); fixed, seed-independent."""
    train, test = [], []
    for a, accent in enumerate(ACCENTS):
        for v, variant in enumerate(VARIANTS):
            (test if (a + 3 * v) % 6 == 0 else train).append((accent, variant))
    return train, test


# ----------------------------------------------------------------------------------------------
# jobs


@dataclass(frozen=True)
class Output:
    """One manifest entry a job writes: its manifest (``train``, ``dev``, ``test_clean`` or
    ``test_noisy``) and the imbalance applied (``None``: the clean utterance)."""

    manifest: str
    imbalance: ImbalanceConfig | None = None

    def utterance_id(self, index: int) -> str:
        return f"{self.manifest.replace('_', '-')}-{index:06d}"


@dataclass(frozen=True)
class SynthJob:
    """One sentence to speak: its split and index (which fix its random stream), the voices to
    draw from, and the outputs to write below ``out_dir`` (a test sentence writes two)."""

    split: str
    index: int
    sentence: str
    voices: tuple[Voice, ...]
    seed: int
    outputs: tuple[Output, ...]
    out_dir: Path

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:06d}"


@dataclass(frozen=True)
class JobResult:
    """What a job produced: (manifest, utterance) pairs, or the reason it was skipped."""

    records: tuple[tuple[str, Utterance], ...] = ()
    error: str | None = None


def _write_utterance(job: SynthJob, output: Output, words: list[str], samples: np.ndarray, starts: list[int],
                     ends: list[int], nonspeech: list[NonSpeechSpan] | None, noise: NoiseInfo | None,
                     gain_db: float, synth_params: dict[str, Any], speaker: str) -> Utterance:
    """Scale to the drawn gain, write ``wav/<manifest>/<shard>/<id>.wav`` (PCM16) and describe it."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    scale = 0.9 * 10.0 ** (gain_db / 20.0) / peak if peak > 0 else 1.0
    pcm = np.clip(np.round(samples * scale * 32767.0), -32768, 32767).astype(np.int16)
    utt_id = output.utterance_id(job.index)
    relative = Path("wav") / output.manifest / f"{job.index // 1000:03d}" / f"{utt_id}.wav"
    path = job.out_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    return Utterance(
        id=utt_id,
        audio_filepath=relative.as_posix(),  # relative to the corpus folder, where the manifests are written
        duration=pcm.size / SAMPLE_RATE,
        text=" ".join(words),
        speaker=speaker,
        sample_rate=SAMPLE_RATE,
        words=[WordSpan(w, s / SAMPLE_RATE, e / SAMPLE_RATE) for w, s, e in zip(words, starts, ends)],
        nonspeech=nonspeech,
        noise=noise,
        extra={"synth": synth_params},
    )


def _synthesize_job(job: SynthJob, babble: BabbleBank) -> JobResult:
    """Speak one job's sentence and write its outputs (all drawn from the job's random stream)."""
    rng = np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index])
    accent, variant = job.voices[int(rng.integers(len(job.voices)))]
    rate_wpm = int(rng.integers(RATE_WPM_RANGE[0], RATE_WPM_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    pitch_range = int(rng.integers(PITCH_VARIATION_RANGE[0], PITCH_VARIATION_RANGE[1] + 1))
    try:
        base = synthesize_utterance(job.sentence, accent, variant, rate_wpm, pitch, pitch_range)
    except ValueError as err:
        return JobResult(error=f"{job.id}: {err}")
    speaker = f"{accent}+{variant}"
    synth_params = {"engine": "espeak-ng", "engine_version": base["espeak_version"], "voice": base["voice"],
                    "rate_wpm": rate_wpm, "pitch": pitch, "pitch_range": pitch_range,
                    "speak_text": base["speak_text"],
                    # eSpeak's own word start events of this very synthesis (22050 Hz samples), kept for
                    # checking: re-synthesising later need not reproduce them exactly (see module doc)
                    "event_samples": base["event_samples"]}
    x, starts, ends, words = base["samples"], base["starts"], base["ends"], base["words"]
    gain_db = float(rng.uniform(-10.0, 0.0))
    records = []
    for output in job.outputs:
        if output.imbalance is None:
            utt = _write_utterance(job, output, words, x, starts, ends, None, None, gain_db, synth_params, speaker)
        else:
            out = impose_imbalance(x, starts, ends, output.imbalance, rng, babble)
            utt = _write_utterance(job, output, words, out.samples, out.starts, out.ends, out.nonspeech, out.noise,
                                   gain_db, synth_params, speaker)
        records.append((output.manifest, utt))
    return JobResult(records=tuple(records))


def _make_jobs(seed: int, out_dir: Path, train_texts: list[str], dev_texts: list[str], test_texts: list[str],
               imbalanced_fraction: float, imbalance: ImbalanceConfig) -> list[SynthJob]:
    """Every job in corpus order: train, dev, test; an exact ``imbalanced_fraction`` of train and
    dev (chosen by the seed) gets ``imbalance``, every test sentence a clean and a heavy output."""
    train_voices, test_voices = voice_pairs()

    def imbalanced_mask(n: int, code: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        chosen = np.random.default_rng([seed, 7, code]).permutation(n)[: int(round(imbalanced_fraction * n))]
        mask[chosen] = True
        return mask

    jobs: list[SynthJob] = []
    for split, texts, voices in (("train", train_texts, train_voices), ("dev", dev_texts, train_voices),
                                 ("test", test_texts, test_voices)):
        mask = imbalanced_mask(len(texts), SPLIT_CODES[split]) if split != "test" else None
        for i, sentence in enumerate(texts):
            if split == "test":
                outputs = (Output("test_clean"), Output("test_noisy", ImbalanceConfig.heavy()))
            else:
                outputs = (Output(split, imbalance if mask[i] else None),)
            jobs.append(SynthJob(split, i, sentence, tuple(voices), seed, outputs, out_dir))
    return jobs


# ----------------------------------------------------------------------------------------------
# the worker pool


def _babble_task(sentences: list[str], voices: list[Voice], seed: int, path: str) -> int:
    bank = BabbleBank.synthesize(sentences, voices, seed)
    bank.save(path)
    return len(bank)


def _shard_task(shard: list[SynthJob], babble_path: str) -> list[JobResult]:
    """Synthesise one shard in a fresh process (see ``synthesize_corpus`` on determinism)."""
    babble = BabbleBank.load(babble_path)
    return [_synthesize_job(job, babble) for job in shard]


def _split_counts(size: str, num_utterances: int | None, num_dev: int | None,
                  num_test: int | None) -> tuple[int, int, int]:
    if size not in SIZES and num_utterances is None:
        raise ValueError(f"size must be one of {sorted(SIZES)} or num_utterances given, got size={size!r}")
    train, dev, test = SIZES.get(size, SIZES["demo"])
    if num_utterances is not None:
        if num_utterances < 1:
            raise ValueError(f"num_utterances must be >= 1, got {num_utterances}")
        train = num_utterances
        dev = test = int(min(2000, max(50, round(0.05 * num_utterances))))
    dev = dev if num_dev is None else num_dev
    test = test if num_test is None else num_test
    return train, dev, test


def synthesize_corpus(
    out_dir: str | os.PathLike,
    *,
    size: str = "demo",
    num_utterances: int | None = None,
    num_dev: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    jobs: int = 2,
    imbalanced_fraction: float = 0.5,
    imbalance: ImbalanceConfig | None = None,
    fortunes_dir: str = FORTUNES_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesise a corpus into ``out_dir``; returns (and writes to ``summary.json``) a summary.

    Writes ``train.jsonl``, ``dev.jsonl``, ``test_clean.jsonl``, ``test_noisy.jsonl``,
    ``wav/<split>/<shard>/<id>.wav`` (16 kHz mono PCM16), ``babble_bank.npz`` and ``summary.json``.
    Worker processes come from a ``forkserver`` that imports the caller's main module: call this
    from under ``if __name__ == "__main__":`` in a script (the CLI does).

    Args:
        size: ``"tiny"`` (40/8/8), ``"demo"`` (1500/150/150) or ``"bench"`` (3000/300/300)
            utterances in train/dev/test (test counts apply to both test_clean and test_noisy);
            demo is about 2.0 h of train audio (2.6 h in all), bench about 3.9 h (5 h in all).
        num_utterances: number of train utterances (overrides ``size``); dev and test then get 5%
            each (50 to 2000). Scales to 100 h and more (train text is reused with new voices).
        num_dev, num_test: override the dev/test counts.
        seed: everything (texts, voices, rates, imbalance, noise) is a function of it.
        jobs: worker processes. Utterances are synthesised in fixed shards of ``SHARD_SIZE``, each
            in a fresh process with its own eSpeak, so the output does not depend on ``jobs``.
        imbalanced_fraction: exact fraction of train and dev utterances that get silence/noise
            (``round(fraction * n)`` of them, chosen by the seed); ``test_noisy`` always does.
        imbalance: probabilities and ranges for train/dev (default ``ImbalanceConfig()``).
    """
    if not 0.0 <= imbalanced_fraction <= 1.0:
        raise ValueError(f"imbalanced_fraction must be in [0, 1], got {imbalanced_fraction}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    num_train, num_dev, num_test = _split_counts(size, num_utterances, num_dev, num_test)
    imbalance = imbalance or ImbalanceConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_output_folder(out_dir)
    try:
        return _synthesize_locked(out_dir, num_train, num_dev, num_test, size, num_utterances, seed, jobs,
                                  imbalanced_fraction, imbalance, fortunes_dir, progress)
    finally:
        lock.close()  # releases the flock


class SynthFolderBusy(ValueError):
    """Another ``otalign synth`` is writing into the same output folder."""


def _lock_output_folder(out_dir: Path):
    """An exclusive ``fcntl.flock`` on ``out_dir/.synth.lock``, held for the whole run: two runs
    into one folder would otherwise mix their audio under one manifest. The second run fails."""
    import fcntl

    handle = open(out_dir / ".synth.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SynthFolderBusy(f"output folder {out_dir} is being written by another otalign synth run "
                              f"(lock {out_dir / '.synth.lock'} is held); wait for it or choose another folder")
    return handle


def _synthesize_locked(out_dir, num_train, num_dev, num_test, size, num_utterances, seed, jobs,
                       imbalanced_fraction, imbalance, fortunes_dir, progress):
    started = time.perf_counter()

    sentences = load_fortune_sentences(fortunes_dir)
    order = np.random.default_rng([seed, 99]).permutation(len(sentences))
    pool = [sentences[i] for i in order]
    if num_test + num_dev >= len(pool):
        raise ValueError(f"only {len(pool)} sentences: too few for {num_test} test + {num_dev} dev")
    test_texts = pool[:num_test]
    dev_texts = pool[num_test:num_test + num_dev]
    train_pool = pool[num_test + num_dev:]
    train_texts = [train_pool[i % len(train_pool)] for i in range(num_train)]
    train_voices, test_voices = voice_pairs()
    job_list = _make_jobs(seed, out_dir.resolve(), train_texts, dev_texts, test_texts, imbalanced_fraction,
                          imbalance)

    shards = [job_list[k:k + SHARD_SIZE] for k in range(0, len(job_list), SHARD_SIZE)]
    babble_path = str(out_dir / "babble_bank.npz")
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = tqdm(total=len(job_list), desc="synth", unit="utt", disable=not progress) if tqdm else None
    # Each shard runs in a fresh process forked from a clean fork server (maxtasksperchild=1):
    # eSpeak keeps state across calls (its pitch-flutter index is a C static), so an utterance's
    # audio depends on what the same process spoke before. A fresh process per fixed shard makes
    # the corpus a function of the seed alone, whatever ``jobs`` is.
    context = multiprocessing.get_context("forkserver")
    # the fork server imports only this package (not the caller's __main__, which may import torch)
    context.set_forkserver_preload(["otalign.data.synth"])
    shard_results: dict[int, list[JobResult]] = {}
    with context.Pool(jobs, maxtasksperchild=1) as workers:
        num_babble = workers.apply(_babble_task, (train_pool, train_voices, seed, babble_path))
        pending = [(k, workers.apply_async(_shard_task, (shard, babble_path))) for k, shard in enumerate(shards)]
        for k, handle in pending:
            shard_results[k] = handle.get()
            if bar:
                bar.update(len(shards[k]))
    if bar:
        bar.close()
    results = [r for k in range(len(shards)) for r in shard_results[k]]

    by_split: dict[str, list[Utterance]] = {"train": [], "dev": [], "test_clean": [], "test_noisy": []}
    errors = []
    for result in results:
        if result.error:
            errors.append(result.error)
        for split, utt in result.records:
            by_split[split].append(utt)
    for split, utterances in by_split.items():
        write_manifest(out_dir / f"{split}.jsonl", utterances)
    elapsed = time.perf_counter() - started

    def hours(utterances: list[Utterance]) -> float:
        # from the durations as the manifest writes them (rounded to 0.1 ms)
        return sum(round(u.duration, 4) for u in utterances) / 3600.0

    total_audio_s = sum(hours(u) for u in by_split.values()) * 3600.0
    config_dict = asdict(imbalance)
    summary: dict[str, Any] = {
        "out_dir": str(out_dir),
        "seed": seed,
        "size": size if num_utterances is None else f"num_utterances={num_utterances}",
        "jobs": jobs,
        "counts": {k: len(v) for k, v in by_split.items()},
        "hours": {k: round(hours(v), 4) for k, v in by_split.items()},
        "imbalanced": {k: sum(1 for u in v if u.nonspeech is not None) for k, v in by_split.items()},
        "imbalanced_fraction": imbalanced_fraction,
        "imbalance": config_dict,
        "skipped": len(errors),
        "skipped_reasons": errors[:20],
        "sentence_pool": len(sentences),
        "train_text_reuse": round(num_train / max(1, len(train_pool)), 3),
        "test_voices": [f"{a}+{v}" for a, v in test_voices],
        "babble_tracks": num_babble,
        "elapsed_s": round(elapsed, 2),
        "audio_s": round(total_audio_s, 2),
        "x_real_time": round(total_audio_s / elapsed, 1) if elapsed > 0 else None,
    }
    with open(out_dir / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"synth: {out_dir}: {counts} utterances; skipped {len(errors)}; "
          f"{total_audio_s / 3600:.2f} h of audio in {elapsed:.1f} s ({summary['x_real_time']}x real time)")
    return summary
