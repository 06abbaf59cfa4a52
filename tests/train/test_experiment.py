"""The experiment grid's code path, reduced (conf/experiment_smoke.yaml), plus its resumability."""

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from otalign.train.config import ConfigError
from otalign.train.experiment import ExperimentConfig, run_configs, run_experiment

ROOT = Path(__file__).resolve().parents[2]


def test_full_grid_config_expands_and_validates():
    spec = ExperimentConfig.load(ROOT / "conf/experiment.yaml")
    runs = run_configs(spec)
    assert len(runs) == len(spec.systems) * len(spec.seeds) * len(spec.benchmarks)
    uot = {c.transfer.rho_frames for _, s, _, c in runs if c.transfer.aligner == "uot"}
    assert len(uot) >= 3


def test_unknown_experiment_key_is_an_error(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("systems: {a: {}}\nbenchmarks: {b: {}}\nseeds: [0]\nsytems: {}\n")
    with pytest.raises(ValueError, match="sytems"):
        ExperimentConfig.load(bad)


@pytest.mark.parametrize("name", ["experiment", "experiment_whisper", "experiment_smoke"])
def test_every_experiment_yaml_loads_into_the_schema(name):
    spec = ExperimentConfig.load(ROOT / f"conf/{name}.yaml")
    assert spec.systems and spec.seeds and spec.benchmarks and spec.prepare.synth is not None
    assert all(set(bench) <= {"data", "model", "teacher", "transfer", "optim"} for bench in spec.benchmarks.values())
    assert ExperimentConfig.from_dict({"systems": {"a": None}, "benchmarks": {"b": None}, "seeds": [0]}).report is None


@pytest.mark.parametrize("text, key", [
    ("prepare: {synt: {out: d}}\n", "prepare.synt"),
    ("prepare: {asterisk: {out: d, limit: 3}}\n", "prepare.asterisk.limit"),
    ("prepare: {synth: {seed: 1}}\n", "prepare.synth.out"),
    ("prepare: [synth]\n", "prepare must be a mapping"),
    ("base: 3\n", "base must be a mapping"),
    ("attempts: {x: [1]}\n", "attempts.x must be a mapping"),
    ("alignment_utterances: 0\n", "alignment_utterances"),
    ("keep_checkpoints: 'no'\n", "keep_checkpoints"),
    ("discussion: 3\n", "discussion"),
    ("name: null\n", "name"),
])
def test_every_experiment_key_is_checked_and_named_with_its_file(tmp_path, text, key):
    bad = tmp_path / "x.yaml"
    bad.write_text("systems: {a: {}}\nbenchmarks: {b: {}}\nseeds: [0]\n" + text)
    with pytest.raises(ValueError, match="x.yaml: .*" + key.replace(".", r"\.")):
        ExperimentConfig.load(bad)


@pytest.mark.parametrize("text, key", [("benchmarks: {b: {tran: {}}}\n", "benchmarks.b.tran"),
                                       ("seeds: [0, 0]\n", "seeds"), ("seeds: [0.5]\n", "seeds")])
def test_benchmarks_and_seeds_are_checked(tmp_path, text, key):
    bad = tmp_path / "x.yaml"
    bad.write_text("systems: {a: {}}\n" + ("" if text.startswith("benchmarks") else "benchmarks: {b: {}}\n")
                   + ("" if text.startswith("seeds") else "seeds: [0]\n") + text)
    with pytest.raises(ValueError, match="x.yaml: .*" + key.replace(".", r"\.")):
        ExperimentConfig.load(bad)


def test_synth_options_are_checked_against_the_synthesizer_when_the_corpus_is_made():
    spec = ExperimentConfig.from_dict({"systems": {"a": {}}, "benchmarks": {"b": {}}, "seeds": [0],
                                       "prepare": {"synth": {"out": "d", "num_utterance": 3}}}, "x.yaml")
    with pytest.raises(ValueError, match="x.yaml: unknown experiment key.*prepare.synth.num_utterance"):
        spec.prepare.synth.check()


@pytest.mark.parametrize("budget", ["six", 0, -1, True])
def test_a_budget_that_is_not_a_positive_number_is_an_error(tmp_path, budget):
    bad = tmp_path / "x.yaml"
    bad.write_text(f"systems: {{a: {{}}}}\nbenchmarks: {{b: {{}}}}\nseeds: [0]\nbudget_hours: {str(budget).lower()}\n")
    with pytest.raises(ValueError, match="x.yaml: budget_hours"):
        ExperimentConfig.load(bad)


@pytest.mark.slow
def test_smoke_grid_runs_writes_results_and_resumes(tmp_path, monkeypatch):
    import shutil
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    monkeypatch.chdir(tmp_path)
    config = ROOT / "conf/experiment_smoke.yaml"
    run_experiment(config, jobs=2)  # the grid's way: one worker process per run
    results = sorted((tmp_path / "exp/smoke/results/synthetic").glob("*.json"))
    assert [p.name for p in results] == ["ctc__seed0.json", "uot_rho1__seed0.json"]
    uot = json.loads(results[1].read_text())
    assert set(uot["test"]) == {"test_clean", "test_noisy"}
    assert 0.0 <= uot["alignment"]["test_noisy"]["micro_precision"] <= 1.0
    assert uot["git_hash"] and uot["config"]["transfer"]["aligner"] == "uot" and uot["kernel"]
    ctc = json.loads(results[0].read_text())
    spans = [(datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in (ctc, uot)]
    assert all(start <= end for start, end in spans)
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # jobs=2: the two runs overlapped
    report = (tmp_path / "exp/smoke/results.md").read_text()
    assert "uot_rho1" in report and "ctc" in report
    stamp = os.path.getmtime(results[0])
    assert (tmp_path / "exp/smoke/runs/synthetic/uot_rho1__seed0/run.log").stat().st_size > 0
    run_experiment(config)  # everything done: nothing is recomputed
    assert os.path.getmtime(results[0]) == stamp


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True, "2"])
def test_jobs_that_is_not_a_positive_whole_number_is_an_error(tmp_path, jobs):
    bad = tmp_path / "x.yaml"
    bad.write_text(f"systems: {{a: {{}}}}\nbenchmarks: {{b: {{}}}}\nseeds: [0]\njobs: {json.dumps(jobs)}\n")
    with pytest.raises(ValueError, match="x.yaml: jobs"):
        ExperimentConfig.load(bad)
    good = tmp_path / "y.yaml"
    good.write_text("systems: {a: {}}\nbenchmarks: {b: {}}\nseeds: [0]\n")
    with pytest.raises(ValueError, match="--jobs"):
        run_experiment(good, jobs=jobs, dry_run=True)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_failed_runs_are_named_and_the_others_still_run(tmp_path, monkeypatch, capsys, jobs):
    """A missing manifest fails its runs; the grid goes on, then says which runs failed and why."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "x.yaml"
    config.write_text(
        "results_dir: res\nexp_root: runs\nseeds: [0, 1]\nbase: {model: {preset: tiny}}\n"
        "systems: {ctc: {transfer: {aligner: none}}}\n"
        "benchmarks: {b: {train: {data: {train_manifests: [missing/train.jsonl], dev_manifest: missing/dev.jsonl,"
        " test_manifests: {t: missing/test.jsonl}}}}}\n")
    with pytest.raises(RuntimeError, match="2 of 2 runs failed") as failure:
        run_experiment(config, jobs=jobs)
    message = str(failure.value)
    assert "b/ctc/seed0" in message and "b/ctc/seed1" in message and "missing/train.jsonl" in message
    if jobs > 1:  # each worker's traceback is in its run's log
        assert "Traceback" in (tmp_path / "runs/b/ctc__seed1/run.log").read_text()
    assert capsys.readouterr().out.count("FAILED") == 2


def test_rho_families_group_uot_runs_by_everything_but_rho():
    from otalign.train.report import rho_families

    def run(name, rho):
        return {"system": name, "rho_frames": rho, "test": {}, "alignment": {}}

    systems = {"ctc": [run("ctc", 1.0)], "uot_rho0.3": [run("uot_rho0.3", 0.3)], "uot_rho3": [run("uot_rho3", 3.0)],
               "uot_rho0.3_layer0_w100": [run("uot_rho0.3_layer0_w100", 0.3)],
               "uot_rho0.03_layer0_w100": [run("uot_rho0.03_layer0_w100", 0.03)],
               "uot_rho0.3_layer0": [run("uot_rho0.3_layer0", 0.3)]}
    families = rho_families(systems)
    # uot_rho*_layer0 has a single rho: no curve; ctc is no uot family
    assert sorted(families) == ["uot_rho*", "uot_rho*_layer0_w100"]
    assert sorted(r["rho_frames"] for r in families["uot_rho*_layer0_w100"]) == [0.03, 0.3]


def test_attempts_run_only_when_named_and_never_clash_with_systems(tmp_path, capsys):
    spec_text = ("seeds: [0]\nbenchmarks: {b: {}}\nreport: null\nresults_dir: " + str(tmp_path / "r") + "\n"
                 "systems: {ctc: {transfer: {aligner: none}}}\n"
                 "attempts: {uot_w100: {transfer: {aligner: uot, weight: 100}}}\n")
    path = tmp_path / "e.yaml"
    path.write_text(spec_text)
    spec = ExperimentConfig.load(path)
    assert [s for _, s, _, _ in run_configs(spec)] == ["ctc"]
    assert [s for _, s, _, _ in run_configs(spec, attempts=True)] == ["ctc", "uot_w100"]
    run_experiment(path, dry_run=True)
    assert "1 runs in the grid (+0 attempts), 1 to do" in capsys.readouterr().out
    run_experiment(path, dry_run=True, only="uot_w100")
    out = capsys.readouterr().out
    assert "todo: b/uot_w100/seed0" in out and "todo: b/ctc" not in out
    with pytest.raises(ValueError, match="unknown system"):
        run_experiment(path, dry_run=True, only="uot_w1000")
    path.write_text(spec_text.replace("uot_w100:", "ctc:"))
    with pytest.raises(ValueError, match="e.yaml: names used both as systems and as attempts"):
        ExperimentConfig.load(path)


def test_config_drift_names_the_settings_a_finished_run_did_not_use():
    from otalign.train.config import to_dict
    from otalign.train.experiment import config_drift

    spec = ExperimentConfig.load(ROOT / "conf/experiment.yaml")
    configs = {(b, s, k): c for b, s, k, c in run_configs(spec)}
    uot = configs[("synthetic", "uot_rho0.3", 0)]
    stored = to_dict(uot)
    assert config_drift(stored, uot) == []
    stored["transfer"]["weight"] = 0.3
    stored["exp_dir"] = "elsewhere"
    del stored["teacher"]["layer"]  # a key missing from an older result is not drift
    assert config_drift(stored, uot) == ["transfer.weight"]
    ctc = configs[("synthetic", "ctc", 0)]
    stored = to_dict(ctc)
    stored["transfer"]["weight"] = 0.3  # plain CTC never used lambda
    assert config_drift(stored, ctc) == []
    stored["optim"]["epochs"] = 5
    assert config_drift(stored, ctc) == ["optim.epochs"]


def test_paired_table_compares_each_seed_with_its_own_ctc_run():
    from otalign.train.report import paired_table

    def run(system, seed, cer):
        return {"system": system, "seed": seed, "test": {"t": {"cer": cer, "wer": 0.5}}, "alignment": {}}

    systems = {"ctc": [run("ctc", 0, 0.30), run("ctc", 1, 0.20)],
               "uot": [run("uot", 0, 0.28), run("uot", 1, 0.19), run("uot", 2, 0.10)]}  # seed 2 has no ctc pair
    lines = paired_table(systems, ["ctc", "uot"])
    # diffs -2 and -1 points: t = -3 on 1 degree of freedom, a Cauchy law, so p = 1 - 2 atan(3) / pi = 0.20
    assert lines[-1] == "| uot | 0,1 | -1.50 ± 0.71 (2/2, p 0.20) |"
    assert paired_table(systems, ["ctc", "uot"], baseline="uot")[-1] == "| ctc | 0,1 | +1.50 ± 0.71 (0/2, p 0.20) |"
    systems["ctc"][1]["kernel"], systems["uot"][1]["kernel"] = "6.18-v1045", "6.18-v1098"
    systems["uot"][0]["kernel"] = "6.18-v1098"  # its ctc pair has no kernel recorded: not flagged
    assert paired_table(systems, ["ctc", "uot"])[-1] == "| uot | 0,1* | -1.50 ± 0.71 (2/2, p 0.20) |"


def test_paired_p_value_matches_the_closed_form_and_refuses_degenerate_input():
    import math

    from otalign.train.report import paired_p_value

    assert math.isclose(paired_p_value([-0.02, -0.01]), 1 - 2 * math.atan(3) / math.pi, rel_tol=1e-9)
    assert math.isnan(paired_p_value([-0.01]))
    assert math.isnan(paired_p_value([-0.01, -0.01]))  # no spread: the t statistic is undefined


def test_cost_line_projects_the_grid_from_the_median_finished_run():
    from otalign.train.budget import cost_line

    systems = {"ctc": [{"wall_s": 600}, {"wall_s": 1200}], "uot": [{"wall_s": 720}],
               "attempt": [{"wall_s": 6000}]}  # not a grid system: left out
    line = cost_line(systems, ["ctc", "uot"], total_runs=10, jobs=2)
    assert "median 12.0 min" in line and "range 10.0-20.0 min over 3 runs" in line
    assert "2.0 h one after another, 1.0 h 2 at a time." in line
    assert "at a time" not in cost_line(systems, ["ctc", "uot"], total_runs=10)
    assert cost_line({}, ["ctc"], 10) == ""


def test_grid_cost_line_sums_both_benchmarks_and_checks_the_budget():
    import dataclasses

    from otalign.train.budget import grid_cost_line

    spec = ExperimentConfig.from_dict({"benchmarks": {"a": {}, "b": {}}, "systems": {"ctc": {}, "uot": {}},
                                       "seeds": [0], "budget_hours": 1, "jobs": 2}, "test")
    grouped = {"a": {"ctc": [{"wall_s": 3600, "x_real_time": 40.0}], "uot": [{"wall_s": 3600, "x_real_time": 80.0}]},
               "b": {"ctc": [{"wall_s": 1800, "x_real_time": 50.0}],
                     "attempt": [{"wall_s": 9e9, "x_real_time": 1.0}]}}  # not a grid system
    line = grid_cost_line(grouped, spec)
    assert "3/4 runs finished, 2.5 h of measured run time, 1.2 h 2 at a time" in line
    assert "at 40-80x real time per process (median 50x)" in line
    assert "over it by 25%" in line and "finished runs alone" in line
    assert "over it by 150%" in grid_cost_line(grouped, dataclasses.replace(spec, jobs=1))  # one at a time: 2.5 h
    grouped["b"]["uot"] = [{"wall_s": 0.0}]  # a run without a recorded time is not counted
    assert "within it" not in grid_cost_line(grouped, spec)
    grouped["a"] = {"ctc": [{"wall_s": 1800}], "uot": [{"wall_s": 1800}]}
    grouped["b"]["uot"] = [{"wall_s": 1800}]
    line = grid_cost_line(grouped, spec)
    assert "4/4 runs finished" in line and "within it (run time over 2)." in line
    assert grid_cost_line({}, spec) == ""


def test_the_budget_is_checked_on_wall_clock_when_runs_have_start_and_finish_times():
    from otalign.train.budget import busy_hours, grid_cost_line

    def run(start, end):  # hours after 10:00 on one day
        stamp = lambda h: f"2026-12-02T{10 + int(h):02d}:{round(60 * (h % 1)):02d}:00+00:00"
        return {"wall_s": (end - start) * 3600, "started_at": stamp(start), "finished_at": stamp(end)}

    # two at a time, then a lone tail, then a pause (a new sitting) and one more pair
    runs = [run(0, 1), run(0, 1.5), run(1, 2), run(4, 5), run(4, 4.5)]
    assert busy_hours(runs) == pytest.approx(2 + 1)
    assert busy_hours(runs[:2] + [{"wall_s": 60}]) is None  # one run without times: no claim
    spec = ExperimentConfig.from_dict({"benchmarks": {"a": {}}, "systems": {"ctc": {}, "uot": {}, "ot": {}, "tot": {},
                                       "cif": {}}, "seeds": [0], "budget_hours": 2.5, "jobs": 2}, "test")
    grouped = {"a": {name: [r] for name, r in zip(spec.systems, runs)}}
    line = grid_cost_line(grouped, spec)
    # summed run time over jobs is 2.5 h, within the budget; the wall-clock, 3.0 h, is not
    assert "5.0 h of measured run time, 2.5 h 2 at a time" in line
    assert "from the runs' start and finish times: 3.0 h" in line
    assert "over it by 20%** (wall-clock)." in line


def test_plot_rho_draws_one_file_and_needs_two_rhos(tmp_path):
    from otalign.train.report import plot_rho

    def run(rho, seed, cer, alignment):
        return {"system": f"uot_rho{rho}", "seed": seed, "rho_frames": rho, "aligner": "uot",
                "test": {"t": {"cer": cer, "wer": 0.5}}, "alignment": alignment}

    scored = {"t": {"micro_precision": 0.2, "micro_token_recall": 0.3, "micro_mass_on_nonspeech": 0.4}}
    systems = {"uot_rho0.1": [run(0.1, 0, 0.30, scored), run(0.1, 1, 0.32, scored)],
               "uot_rho1": [run(1, 0, 0.28, {})]}  # one seed (no error bar), no word timings
    assert plot_rho(systems, tmp_path / "a.png", "t") and (tmp_path / "a.png").stat().st_size > 0
    unscored = {name: [dict(r, alignment={}) for r in runs] for name, runs in systems.items()}
    assert plot_rho(unscored, tmp_path / "b.png", "t") and (tmp_path / "b.png").exists()
    assert not plot_rho({"uot_rho0.1": systems["uot_rho0.1"]}, tmp_path / "c.png", "t")
    assert not (tmp_path / "c.png").exists()


def test_empty_alignment_columns_are_explained_only_when_no_transfer_run_was_scored():
    from otalign.train.report import alignment_note

    unscored = {"ctc": [{"aligner": "none", "alignment": {}}], "uot": [{"aligner": "uot", "alignment": {}}]}
    assert "no ground-truth word timings" in alignment_note(unscored)[0]
    scored = {**unscored, "ot": [{"aligner": "ot", "alignment": {"t": {"micro_precision": 0.1}}}]}
    assert alignment_note(scored) == []
    assert alignment_note({"ctc": unscored["ctc"]}) == []  # plain CTC alone aligns nothing to score


@pytest.mark.slow
def test_the_grid_runs_unchanged_under_torchrun_with_each_run_on_both_ranks(tmp_path):
    import shutil
    import subprocess
    import sys
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "otalign.cli", "experiment", "--config", str(ROOT / "conf/experiment_smoke.yaml"),
               "--only", "uot_rho1", "--jobs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "runs go one at a time" in done.stdout  # jobs 2 cannot mean two runs when each uses both ranks
    assert done.stdout.count("finished synthetic/uot_rho1/seed0") == 1  # rank 0 reports, once
    results = sorted((tmp_path / "exp/smoke/results/synthetic").glob("*.json"))
    assert [p.name for p in results] == ["uot_rho1__seed0.json"]
    uot = json.loads(results[0].read_text())
    assert set(uot["test"]) == {"test_clean", "test_noisy"} and "test_noisy" in uot["alignment"]
    trained = json.loads((tmp_path / "exp/smoke/runs/synthetic/uot_rho1__seed0/avg.json").read_text())
    assert trained["world_size"] == 2
    assert (tmp_path / "exp/smoke/results.md").exists()


def test_set_overrides_the_experiment_yaml_for_the_gpu_variant():
    gpu = ["base.model.frontend=whisper-base", "base.model.freeze_layers=0", "base.optim.pretrained_lr=0.0002",
           "results_dir=results/whisper_base",
           "exp_root=exp/experiment_whisper_base", "report=docs/results_whisper_base.md", "discussion=null"]
    cpu_spec = ExperimentConfig.load("conf/experiment_whisper.yaml")
    spec = ExperimentConfig.load("conf/experiment_whisper.yaml", gpu)
    assert (spec.results_dir, spec.report, spec.discussion) == ("results/whisper_base", "docs/results_whisper_base.md", None)
    runs, cpu_runs = run_configs(spec), run_configs(cpu_spec)
    assert len(runs) == len(cpu_runs) == 54
    assert {(c.model.frontend, c.model.freeze_layers) for *_, c in runs} == {("whisper-base", 0)}
    assert {(c.optim.pretrained_lr, c.optim.lr) for *_, c in runs} == {(0.0002, 0.001)}
    assert {(c.model.frontend, c.model.freeze_layers) for *_, c in cpu_runs} == {("whisper-tiny.en", 3)}
    assert all(c.exp_dir.startswith("exp/experiment_whisper_base/") for *_, c in runs)
    with pytest.raises(ConfigError, match="with --set.*resuls_dir"):
        ExperimentConfig.load("conf/experiment_whisper.yaml", ["resuls_dir=x"])
    with pytest.raises(ConfigError, match="model.freeze_layers"):
        run_configs(ExperimentConfig.load("conf/experiment_whisper.yaml", ["base.model.freeze_layers=-1"]))
