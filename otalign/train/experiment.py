"""`otalign experiment`: the grid that tests the paper's claim, resumable stage by stage.

Stages (each idempotent, each skipped when its output exists):
  1. data      synthesize the bench corpus / prepare the asterisk prompts (``prepare`` section)
  2. runs      for every benchmark x system x seed: train, decode every test manifest, measure
               the system's alignment against ground-truth word spans, write one small JSON to
               ``results_dir/<benchmark>/<system>__seed<k>.json`` (these are committed, so the grid
               resumes from them on another machine instead of recomputing)
  3. report    ``docs/results.md`` (+ plots) generated from the JSON files only

The experiment YAML is an :class:`ExperimentConfig` (every key checked, unknown keys are errors):
``base`` (a TrainConfig mapping), ``systems`` (name -> overrides), ``benchmarks`` (name ->
``{train: overrides}``, typically data paths) and ``seeds``; a run's config is
base <- benchmark <- system <- {seed, exp_dir}, validated by the one schema in config.py.
``attempts`` has the same form as ``systems``: the settings tried while looking for why the grid
does what it does. They are not part of the grid: they run only when ``--only`` names them, and
the report lists them in a table of their own. ``jobs`` (default 1; ``--jobs`` overrides) runs
that many runs at once, each in its own process with ``base.threads`` torch threads and its log in
``<exp_dir>/run.log``; conf/experiment.yaml sets one thread per run and one run per core.
Under torchrun every run trains on all ranks with DDP, one run at a time; rank 0 prepares the
data, decodes, scores and writes. ``budget_hours`` (optional) is the wall-clock the grid should
fit in, checked by the report (otalign/train/budget.py).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from otalign.train.config import _from_dict, ConfigError, TrainConfig, apply_overrides, to_dict, validate


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class SynthPrepare:
    """``prepare.synth``: ``out`` plus keyword arguments of ``otalign.data.synth.synthesize_corpus``.

    The option names are checked against that function's signature when the corpus is made
    (:meth:`check`), so that loading a config does not import the synthesizer.
    """
    out: str
    options: dict[str, Any] = field(default_factory=dict)
    where: str = "experiment"

    def check(self) -> None:
        import inspect

        from otalign.data.synth import synthesize_corpus
        known = set(inspect.signature(synthesize_corpus).parameters) - {"out_dir"}
        _keys(self.options, known | {"out"}, self.where, "prepare.synth")


@dataclass
class AsteriskPrepare:
    """``prepare.asterisk``: the folder the asterisk prompts are prepared into."""
    out: str


@dataclass
class PrepareConfig:
    """Stage 1: what to make before the first run (each part skipped when its ``train.jsonl`` exists)."""
    synth: SynthPrepare | None = None
    asterisk: AsteriskPrepare | None = None


@dataclass
class ExperimentConfig:
    """The experiment YAML (conf/experiment*.yaml), every key checked; see the module doc."""
    seeds: list[int]
    systems: dict[str, dict[str, Any]]
    """name -> TrainConfig overrides (the grid)."""
    benchmarks: dict[str, dict[str, Any]]
    """name -> TrainConfig overrides (its ``train`` mapping), typically the data paths."""
    name: str = "experiment"
    results_dir: str = "results"
    exp_root: str = "exp/experiment"
    report: str | None = None
    """The results page written from the JSON files; none when null."""
    discussion: str | None = None
    """Hand-written markdown appended to the report; by default ``results_discussion.md`` beside it, if there."""
    alignment_utterances: int = 64
    keep_checkpoints: bool = True
    jobs: int = 1
    budget_hours: float | None = None
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    base: dict[str, Any] = field(default_factory=dict)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Like ``systems``, run only when ``--only`` names them."""
    source: str = "experiment"
    """Where this config was read from (the report names it)."""

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        """Read an experiment YAML and apply ``--set`` overrides to it (dotted keys of the file,
        e.g. ``base.model.frontend=whisper-base`` or ``results_dir=results/whisper_base``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"experiment config not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"experiment config {path} must hold a mapping at the top level, got {type(raw).__name__}")
        return cls.from_dict(apply_overrides(raw, overrides or []), str(path) + (" with --set" if overrides else ""))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "experiment") -> ExperimentConfig:
        """Validate ``d`` (a parsed experiment YAML); errors read ``<where>: <key> ...``."""
        _keys(d, {f.name for f in fields(cls)}, where, "")
        for key in ("systems", "benchmarks", "seeds"):
            if not d.get(key):
                raise ConfigError(f"{where}: '{key}' is empty or missing")
        seeds = d["seeds"]
        if not isinstance(seeds, list) or not all(_whole(k, 0) for k in seeds) or len(set(seeds)) < len(seeds):
            raise ConfigError(f"{where}: seeds must be a list of distinct whole numbers, got {seeds!r}")
        scalars = {}
        for key, (default, ok, what) in _SCALARS.items():
            value = scalars[key] = d.get(key, default)
            if not (value is None and default is None) and not ok(value):
                raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")
        base = _mapping(d.get("base"), where, "base")
        systems = {name: _mapping(o, where, f"systems.{name}") for name, o in _mapping(d["systems"], where, "systems").items()}
        attempts = {name: _mapping(o, where, f"attempts.{name}")
                    for name, o in _mapping(d.get("attempts"), where, "attempts").items()}
        clash = set(systems) & set(attempts)
        if clash:
            raise ConfigError(f"{where}: names used both as systems and as attempts: {sorted(clash)}")
        benchmarks = {}
        for name, bench in _mapping(d["benchmarks"], where, "benchmarks").items():
            bench = _mapping(bench, where, f"benchmarks.{name}")
            _keys(bench, {"train"}, where, f"benchmarks.{name}")
            benchmarks[name] = _mapping(bench.get("train"), where, f"benchmarks.{name}.train")
        return cls(seeds=list(seeds), systems=systems, benchmarks=benchmarks, **scalars,
                   jobs=check_jobs(d.get("jobs", 1), f"{where}: jobs"),
                   prepare=_prepare(d.get("prepare"), where), base=base, attempts=attempts, source=where)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _whole(value: Any, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


# the scalar keys: default, check, what a value must be (a null default allows null)
_SCALARS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    "name": ("experiment", _text, "a non-empty string"),
    "results_dir": ("results", _text, "a folder path"),
    "exp_root": ("exp/experiment", _text, "a folder path"),
    "report": (None, _text, "null or a file path"),
    "discussion": (None, _text, "null or a markdown file's path"),
    "alignment_utterances": (64, _whole, "a positive whole number"),
    "keep_checkpoints": (True, lambda v: isinstance(v, bool), "true or false"),
    "budget_hours": (None, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                     "a positive number of hours"),
}


def _mapping(value: Any, where: str, key: str) -> dict[str, Any]:
    """A YAML mapping (an empty entry, ``ctc:``, is an empty one); anything else names ``key``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
    return value


def _keys(d: dict[str, Any], known: set[str], where: str, section: str) -> None:
    unknown = set(_mapping(d, where, section or "the file")) - known
    if unknown:
        what = f"key(s) {sorted(f'{section}.{k}' if section else k for k in unknown)}"
        raise ConfigError(f"{where}: unknown experiment {what} (known{f' in {section}' if section else ''}: "
                          f"{sorted(known)})")


def _prepare(d: Any, where: str) -> PrepareConfig:
    d = _mapping(d, where, "prepare")
    _keys(d, {"synth", "asterisk"}, where, "prepare")
    prepare = PrepareConfig()
    for part in d:
        spec = _mapping(d[part], where, f"prepare.{part}")
        out = spec.get("out")
        if not isinstance(out, str) or not out.strip():
            raise ConfigError(f"{where}: prepare.{part}.out must be a folder path, got {out!r}")
        if part == "asterisk":
            _keys(spec, {"out"}, where, "prepare.asterisk")
            prepare.asterisk = AsteriskPrepare(out)
        else:
            prepare.synth = SynthPrepare(out, {k: v for k, v in spec.items() if k != "out"}, where)
    return prepare


def check_jobs(jobs: Any, where: str) -> int:
    """``jobs`` as a positive int, or a ConfigError that names ``where`` it came from."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{where} must be a positive whole number of runs at once, got {jobs!r}")
    return jobs


def run_configs(spec: ExperimentConfig, attempts: bool = False) -> list[tuple[str, str, int, TrainConfig]]:
    """Every (benchmark, system, seed, config) of the grid (plus the attempts if asked), validated up front."""
    runs = []
    exp_root = Path(spec.exp_root)
    systems = {**spec.systems, **spec.attempts} if attempts else spec.systems
    for bench_name, bench in spec.benchmarks.items():
        for system, overrides in systems.items():
            for seed in spec.seeds:
                raw = _merge(_merge(spec.base, bench), overrides)
                raw["seed"] = seed
                raw["exp_dir"] = str(exp_root / bench_name / f"{system}__seed{seed}")
                config = _from_dict(TrainConfig, raw, "")
                validate(config)
                runs.append((bench_name, system, seed, config))
    return runs


def result_path(spec: ExperimentConfig, bench: str, system: str, seed: int) -> Path:
    return Path(spec.results_dir) / bench / f"{system}__seed{seed}.json"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_drift(stored: dict[str, Any], current: TrainConfig) -> list[str]:
    """Dotted keys where a finished run's stored config differs from what the YAML now says.

    A result is reused on the strength of its file name, so an edited YAML could silently pair a
    name with other settings. Ignored: ``exp_dir``, keys the stored config lacks (schema fields
    added later, at their defaults) and, for plain CTC, the teacher and transfer settings it never used.
    """
    old, new = _flatten(stored), _flatten(to_dict(current))
    ignore = {"exp_dir"}
    if current.transfer.aligner == "none" and old.get("transfer.aligner") == "none":
        ignore |= {k for k in new if k.startswith(("teacher.", "transfer."))}
    return sorted(k for k in new if k in old and k not in ignore and old[k] != new[k])


# ----------------------------------------------------------------------------- stage 1: data
def prepare_data(spec: ExperimentConfig) -> None:
    prepare = spec.prepare
    if prepare.synth is not None:
        out = Path(prepare.synth.out)
        if not (out / "train.jsonl").exists():
            from otalign.data.synth import synthesize_corpus
            prepare.synth.check()
            options = prepare.synth.options
            print(f"[experiment] synthesizing {out} ({options})")
            synthesize_corpus(out, **options)
    if prepare.asterisk is not None:
        out = Path(prepare.asterisk.out)
        if not (out / "train.jsonl").exists():
            from otalign.data.asterisk import prepare_asterisk
            print(f"[experiment] preparing asterisk prompts into {out}")
            prepare_asterisk(out)


# ----------------------------------------------------------------------------- stage 2: one run
def run_one(spec: ExperimentConfig, bench: str, system: str, seed: int,
            config: TrainConfig) -> dict[str, Any] | None:
    """Train one run (on every torchrun rank), then decode, score and write its result (rank 0).

    Returns the result on rank 0 and None on the other ranks.
    """
    from otalign.train.trainer import barrier, git_hash, run, setup_distributed

    started = time.time()
    started_at = _utc_now()
    code_version = git_hash()  # at the start: the tree may change while a long run trains
    final = run(config, resume=True)
    info = setup_distributed()
    if not info.is_main:
        barrier(info)  # rank 0 decodes and scores alone; wait so the next run starts together
        return None
    try:
        return _evaluate_and_record(spec, bench, system, seed, config, final, started, started_at, code_version)
    finally:
        barrier(info)  # even when scoring failed: the other ranks must not wait for ever


def _evaluate_and_record(spec: ExperimentConfig, bench: str, system: str, seed: int, config: TrainConfig,
                         final: Path, started: float, started_at: str, code_version: str) -> dict[str, Any]:
    from otalign.data.manifest import read_manifest
    from otalign.decode.recipe import decode_manifest
    from otalign.train.checkpoint import rank_checkpoints, read_sidecars
    from otalign.train.system import System

    exp_dir = Path(config.exp_dir)
    sidecars = read_sidecars(exp_dir)
    tests: dict[str, Any] = {}
    for name, manifest in config.data.test_manifests.items():
        report = decode_manifest(final, manifest, exp_dir / "decode", feature_cache_dir=config.data.feature_cache_dir)
        tests[name] = {"cer": report.cer, "wer": report.wer, "num_utts": report.num_utts}
    alignment: dict[str, Any] = {}
    if config.transfer.aligner != "none":
        trained = System.load(exp_dir / f"epoch_{rank_checkpoints(exp_dir)[0]['epoch']}.pt")
        limit = spec.alignment_utterances
        for name, manifest in config.data.test_manifests.items():
            utterances = list(read_manifest(manifest))[:limit]
            if any(u.words for u in utterances):  # real corpora carry no word timings
                metrics = trained.alignment_metrics(utterances)
                alignment[name] = {k: metrics[k] for k in ("micro_precision", "micro_token_recall", "micro_f1",
                                                           "micro_mass_on_nonspeech", "micro_boundary_error_ms",
                                                           "num_without_word_spans")}
    result = {
        "benchmark": bench, "system": system, "seed": seed, "git_hash": code_version,
        "aligner": config.transfer.aligner, "rho_frames": config.transfer.rho_frames,
        "dev_cer": sidecars[-1]["dev_cer"] if sidecars else math.nan,
        "best_dev_cer": min((m["dev_cer"] for m in sidecars), default=math.nan),
        "test": tests, "alignment": alignment,
        "epochs": len(sidecars),
        "epoch_time_s": statistics.median(m["epoch_time_s"] for m in sidecars) if sidecars else math.nan,
        "x_real_time": statistics.median(m["x_real_time"] for m in sidecars) if sidecars else math.nan,
        "wall_s": time.time() - started,
        # when, not only how long: the report measures the grid's wall-clock from these
        "started_at": started_at, "finished_at": _utc_now(),
        # a seed reproduces its run only on one kernel build (results/diagnostics/rerun_reproducibility.csv)
        "kernel": platform.release(),
        "config": to_dict(config),
    }
    path = result_path(spec, bench, system, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default))
    tmp.replace(path)
    if not spec.keep_checkpoints:
        for ckpt in exp_dir.glob("epoch_*.pt"):
            ckpt.unlink()
    return result


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


# ----------------------------------------------------------------------------- driver
def _run_one_logged(spec: ExperimentConfig, bench: str, system: str, seed: int, config: TrainConfig) -> dict[str, Any]:
    """`run_one` in a worker process, its output (tqdm, warnings, C-level too) in ``<exp_dir>/run.log``."""
    log = Path(config.exp_dir) / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as fh:
        os.dup2(fh.fileno(), 1), os.dup2(fh.fileno(), 2)
        try:
            return run_one(spec, bench, system, seed, config)
        except Exception:
            traceback.print_exc()  # the parent gets the exception, the log keeps where it came from
            raise
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _run_pending(spec: ExperimentConfig, pending: list[tuple[str, str, int, TrainConfig]], jobs: int) -> None:
    """Run ``pending`` in order, ``jobs`` at a time; a failed run is reported and the others go on.

    With one job the runs go in this process, their output on the console; with more, each goes
    in a worker process and logs to ``<exp_dir>/run.log``.
    """
    failed = []

    def report(done: int, run: tuple, outcome: Callable[[], dict[str, Any]]) -> None:
        bench, system, seed, config = run
        name = f"{bench}/{system}/seed{seed}"
        try:
            result = outcome()
        except Exception as exc:  # one bad run must not take the rest of the grid down
            if jobs == 1:
                traceback.print_exc()
            where = f" (log {Path(config.exp_dir) / 'run.log'})" if jobs > 1 else ""
            failed.append(f"{name}: {type(exc).__name__}: {exc}{where}")
            print(f"[experiment] ({done}/{len(pending)}) FAILED {failed[-1]}", flush=True)
            return
        if result is None:  # a torchrun rank other than 0: rank 0 reports
            return
        cers = ", ".join(f"{k} CER {100 * v['cer']:.1f}%" for k, v in result["test"].items())
        print(f"[experiment] ({done}/{len(pending)}) finished {name} in {result['wall_s'] / 60:.1f} min: {cers}",
              flush=True)

    if jobs == 1:
        for done, run in enumerate(pending, 1):
            if _is_main_process():
                print(f"[experiment] ({done}/{len(pending)}) {run[0]}/{run[1]}/seed{run[2]} -> {run[3].exp_dir}",
                      flush=True)
            report(done, run, lambda: run_one(spec, *run))
    else:
        # spawn, not fork: forking a process whose torch has started its OpenMP threads can hang the child
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_one_logged, spec, *run): run for run in pending}
            for bench, system, seed, config in pending:
                print(f"[experiment] queued {bench}/{system}/seed{seed}, log {Path(config.exp_dir) / 'run.log'}")
            for done, future in enumerate(as_completed(futures), 1):
                report(done, futures[future], future.result)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(pending)} runs failed:\n  " + "\n  ".join(failed))


def run_experiment(config_path: str | Path, only: str | None = None, dry_run: bool = False,
                   report_only: bool = False, seeds: str | None = None, benchmarks: str | None = None,
                   jobs: int | None = None, overrides: list[str] | None = None) -> None:
    """Run what is missing of the grid (optionally only some systems, seeds or benchmarks), then report.

    Runs are ordered seed-major (every system's seed 0 before any seed 1), so a grid cut short
    still compares all systems. ``jobs`` overrides the config's ``jobs``: runs at once.
    ``overrides``: ``--set`` items applied to the experiment YAML (:meth:`ExperimentConfig.load`).
    """
    spec = ExperimentConfig.load(config_path, overrides)
    if jobs is not None:
        spec.jobs = check_jobs(jobs, "--jobs")
    wanted = set(only.split(",")) if only else None
    known = set(spec.systems) | set(spec.attempts)
    if wanted and wanted - known:
        raise ValueError(f"--only: unknown system(s) {sorted(wanted - known)} in {config_path}")
    # attempts run only when --only names them; the grid count covers the systems alone
    runs = [r for r in run_configs(spec, attempts=bool(wanted)) if r[1] in spec.systems or r[1] in wanted]
    runs.sort(key=lambda r: (list(spec.benchmarks).index(r[0]), r[2]))
    wanted_seeds = {int(k) for k in seeds.split(",")} if seeds else None
    wanted_benchmarks = set(benchmarks.split(",")) if benchmarks else None
    if not report_only:
        _run_missing(spec, runs, config_path, dry_run, wanted, wanted_seeds, wanted_benchmarks)
        if dry_run:
            return
    if spec.report and _is_main_process():
        from otalign.train.report import write_report
        write_report(spec, Path(spec.report))


def _run_missing(spec: ExperimentConfig, runs: list[tuple[str, str, int, TrainConfig]], config_path: str | Path,
                 dry_run: bool, wanted: set[str] | None, wanted_seeds: set[int] | None,
                 wanted_benchmarks: set[str] | None) -> None:
    """Stages 1 and 2 for the runs without a result, alone or on every rank of a torchrun job.

    Under torchrun (``torchrun --nproc_per_node=N -m otalign.cli experiment ...``) each run trains
    on all ranks with DDP, so runs go one at a time whatever ``jobs`` says; rank 0 prepares the
    data, decides what is missing, decodes, scores and writes the results.
    """
    import torch.distributed as dist

    from otalign.train.trainer import barrier, setup_distributed

    owns_group = not (dist.is_available() and dist.is_initialized())
    info = setup_distributed()
    say = print if info.is_main else (lambda *args, **kwargs: None)
    try:
        pending = [(b, s, k, c) for b, s, k, c in runs
                   if not result_path(spec, b, s, k).exists() and (wanted is None or s in wanted)
                   and (wanted_seeds is None or k in wanted_seeds)
                   and (wanted_benchmarks is None or b in wanted_benchmarks)]
        if info.world_size > 1:
            # rank 0's view of results/ decides, so that every rank trains the same runs in the same order
            todo = [[(b, s, k) for b, s, k, _ in pending]]
            dist.broadcast_object_list(todo, src=0)
            by_key = {(b, s, k): (b, s, k, c) for b, s, k, c in runs}
            pending = [by_key[tuple(key)] for key in todo[0]]
            if spec.jobs > 1:
                say(f"[experiment] under torchrun each run trains on all {info.world_size} ranks: "
                    f"runs go one at a time (jobs: {spec.jobs} is not used)")
                spec.jobs = 1
        grid_size = sum(1 for r in runs if r[1] in spec.systems)
        say(f"[experiment] {grid_size} runs in the grid (+{len(runs) - grid_size} attempts), {len(pending)} to do")
        for bench, system, seed, config in runs:
            path = result_path(spec, bench, system, seed)
            if path.exists() and info.is_main:
                drift = config_drift(json.loads(path.read_text()).get("config", {}), config)
                if drift:
                    say(f"[experiment] WARNING: {path} was run with other settings than {config_path} now "
                        f"gives '{system}' ({', '.join(drift)}); delete it to rerun")
        for bench, system, seed, _ in pending if dry_run else []:
            say(f"  todo: {bench}/{system}/seed{seed}")
        if dry_run:
            return
        if pending:
            if info.is_main:
                prepare_data(spec)
            barrier(info)
        _run_pending(spec, pending, spec.jobs)
    finally:
        if info.world_size > 1 and owns_group:
            dist.destroy_process_group()


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (the report is written once)."""
    return int(os.environ.get("RANK", "0")) == 0
