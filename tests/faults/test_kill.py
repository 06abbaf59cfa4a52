"""kill -9 at several points of a real ``otalign train`` process, then ``--resume``: the final model
must be bit-identical to an uninterrupted run with the same seed.

One tiny corpus (12 eSpeak NG utterances), one tiny model (0.09M parameters), 4 epochs of 3 steps.
Three runs of the real CLI, each in its own folder, two at a time:

* ``ref``: uninterrupted;
* ``chain``: killed at six points in turn, each time resumed with ``--resume``: mid-epoch before
  any checkpoint exists, an external ``kill -9`` from this test just after ``epoch_1.pt`` appears,
  mid-epoch after a resume, between a checkpoint and its sidecar, during a checkpoint write (a
  half-written temporary file), and just after a checkpoint and its sidecar are written;
* ``fallback``: ``ref``'s finished exp_dir with its newest checkpoint truncated, resumed: it must
  fall back to the previous epoch, rename the damaged file ``.unreadable``, name it, retrain the
  last epoch to the same weights, and leave TensorBoard with no step twice (purge_step).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from otalign.models.export import load_checkpoint

DRIVER = Path(__file__).with_name("kill_driver.py")
EPOCHS = 4
KILLED = -signal.SIGKILL
TIMING_KEYS = {"epoch_time_s", "x_real_time"}

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.slow]  # the module fixture trains and kills runs: about a minute


def _config(root: Path) -> str:
    corpus = root / "corpus"
    # exp_dir is relative (each run has its own working folder), so a copied exp_dir resumes as is
    return f"""exp_dir: exp
seed: 3
threads: 1
data:
  train_manifests: [{corpus}/train.jsonl]
  dev_manifest: {corpus}/dev.jsonl
  feature_cache_dir: {root}/fbank
  max_batch_seconds: 16
model:
  overrides: {{d_model: 32, num_layers: 1, ff_dim: 64, num_heads: 4}}
transfer:
  aligner: none
optim:
  epochs: {EPOCHS}
  warmup_steps: 3
keep_checkpoints: 10
average_best: {EPOCHS}
log_every: 1
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTALIGN_")}
    env.update(OMP_NUM_THREADS="1", OTALIGN_PROGRESS="0", PYTHONUNBUFFERED="1", **extra)
    return env


def _train(folder: Path, config: Path, resume: bool, kill: str = "", pause: float = 0.0,
           kill_when: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``otalign train`` in ``folder``; ``kill_when``: SIGKILL it from here as soon as
    that file (under exp/) exists."""
    command = [sys.executable, str(DRIVER), "train", "--config", str(config)] + (["--resume"] if resume else [])
    env = _env(OTALIGN_KILL=kill, OTALIGN_STEP_PAUSE=str(pause))
    proc = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_when is not None:
        target = folder / "exp" / kill_when
        deadline = time.monotonic() + 300
        while proc.poll() is None and not target.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _epochs(exp: Path, suffix: str) -> set[int]:
    return {int(p.name[len("epoch_"):-len(suffix)]) for p in exp.glob(f"epoch_*{suffix}")}


def _state(exp: Path) -> tuple[set[int], set[int]]:
    return _epochs(exp, ".pt"), _epochs(exp, ".json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from otalign.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("kill")
    synthesize_corpus(root / "corpus", size="tiny", num_utterances=12, num_dev=3, num_test=1, seed=0, jobs=1,
                      progress=False)
    config = root / "conf.yaml"
    config.write_text(_config(root))
    folders = {name: root / name for name in ("ref", "chain", "fallback")}
    for folder in folders.values():
        folder.mkdir()
    results: dict[str, object] = {"root": root, "folders": folders}

    def reference_then_fallback():
        results["ref"] = _train(folders["ref"], config, resume=False)
        if results["ref"].returncode != 0:
            return
        shutil.copytree(folders["ref"] / "exp", folders["fallback"] / "exp")
        newest = folders["fallback"] / "exp" / f"epoch_{EPOCHS}.pt"
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up
        results["fallback"] = _train(folders["fallback"], config, resume=True)

    side = threading.Thread(target=reference_then_fallback)
    side.start()
    exp = folders["chain"] / "exp"
    segments = []  # (what, result, (pts, jsons) before, (pts, jsons) after)
    plan = [
        ("mid-epoch, before any checkpoint", dict(resume=False, kill="step:2")),
        ("external kill -9 as epoch_1.pt appears", dict(resume=True, pause=0.1, kill_when="epoch_1.pt")),
        ("mid-epoch after a resume", dict(resume=True, kill="step:2")),
        ("between a checkpoint and its sidecar", dict(resume=True, kill="mid_save")),
        ("during a checkpoint write", dict(resume=True, kill="torn")),
        ("just after a checkpoint and its sidecar", dict(resume=True, kill="after_save")),
        ("resumed to the end", dict(resume=True)),
    ]
    for what, options in plan:
        before = _state(exp)
        result = _train(folders["chain"], config, **options)
        segments.append((what, result, before, _state(exp)))
        if what != plan[-1][0] and result.returncode != KILLED:
            break
    side.join()
    results["segments"] = segments
    return results


def _describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def _assert_same_run(exp: Path, ref: Path) -> None:
    final, expected = (load_checkpoint(e / f"epoch_{EPOCHS}.pt") for e in (exp, ref))
    for key in ("trainable",):
        different = [k for k in expected[key] if not torch.equal(final[key][k], expected[key][k])]
        assert not different, f"{len(different)} tensors of {key} differ, e.g. {different[:3]}"
    for name, tensor in expected["optimizer"]["state"].items():
        for slot, value in tensor.items():
            assert torch.equal(final["optimizer"]["state"][name][slot], value), f"optimizer state {name}.{slot}"
    assert final["scheduler"] == expected["scheduler"] and final["step"] == expected["step"]
    averaged, averaged_ref = (load_checkpoint(e / "avg.pt") for e in (exp, ref))
    assert json.loads((exp / "avg.json").read_text())["averaged_epochs"] == \
        json.loads((ref / "avg.json").read_text())["averaged_epochs"]
    assert averaged["state_dict"].keys() == averaged_ref["state_dict"].keys()
    assert all(torch.equal(averaged["state_dict"][k], v) for k, v in averaged_ref["state_dict"].items()), "avg.pt"
    for epoch in range(1, EPOCHS + 1):
        metrics, metrics_ref = (json.loads((e / f"epoch_{epoch}.json").read_text()) for e in (exp, ref))
        for key in set(metrics_ref) - TIMING_KEYS:  # compared as JSON text: a NaN metric equals itself
            assert json.dumps(metrics.get(key)) == json.dumps(metrics_ref[key]), f"epoch {epoch}: {key}"


def _scalar_events(tensorboard: Path) -> list[tuple[int, int | None, list[tuple[str, int]]]]:
    """Per event file (in the order written): its index, the purge step it starts with (SessionLog
    START, what ``SummaryWriter(purge_step=...)`` writes) and its (tag, step) scalar events."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    files = sorted(tensorboard.glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.name))
    out = []
    for index, path in enumerate(files):
        purge, scalars = None, []
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                purge = event.step
            for value in event.summary.value:
                scalars.append((value.tag, event.step))
        out.append((index, purge, scalars))
    return out


def _visible_steps(tensorboard: Path) -> list[tuple[str, int]]:
    """What TensorBoard shows: a file starting with a purge step drops the earlier files' events at
    or after that step."""
    visible: list[tuple[str, int]] = []
    for _, purge, scalars in _scalar_events(tensorboard):
        if purge is not None:
            visible = [(tag, step) for tag, step in visible if step < purge]
        visible += scalars
    return visible


def test_the_uninterrupted_reference_run_finished(runs):
    assert runs["ref"].returncode == 0, _describe(runs["ref"])


def test_each_kill_landed_where_planned(runs):
    segments = runs["segments"]
    assert len(segments) == 7, "a planted kill did not happen:\n" + _describe(segments[-1][1])
    for what, result, _, _ in segments[:-1]:
        assert result.returncode == KILLED, f"{what}: " + _describe(result)
    (_, _, _, after0), (_, _, _, after1), (_, r2, before2, after2) = segments[:3]
    assert after0 == (set(), set()), "killed mid epoch 1: no checkpoint yet"
    assert 1 in after1[0], "the external kill came after epoch_1.pt"
    assert after2 == before2 and "resumed from" in r2.stdout, "mid-epoch: nothing new on disk"
    _, r3, before3, after3 = segments[3]
    new = (after3[0] | after3[1]) - (before3[0] | before3[1])
    assert len(new) == 1 and "resumed from" in r3.stdout, "one file of one new epoch was written"
    assert after3[0] == before3[0], "the sidecar is written first: no checkpoint without its metrics"
    torn_dir = runs["folders"]["chain"] / "exp"
    _, r4, before4, after4 = segments[4]
    assert after4[0] == before4[0], "a torn write never shows up as epoch_N.pt"
    _, r5, before5, after5 = segments[5]
    assert len(after5[0] - before5[0]) == 1 and after5[0] <= after5[1], "a checkpoint with its sidecar"
    last = segments[6][1]
    assert last.returncode == 0, _describe(last)
    assert not list(torn_dir.glob("*.unreadable")), "an interrupted write never damages a checkpoint"


def test_resume_after_every_kill_is_bit_identical_to_the_uninterrupted_run(runs):
    assert runs["ref"].returncode == 0 and runs["segments"][-1][1].returncode == 0
    _assert_same_run(runs["folders"]["chain"] / "exp", runs["folders"]["ref"] / "exp")


def test_tensorboard_shows_no_step_twice_after_the_kills(runs):
    visible = _visible_steps(runs["folders"]["chain"] / "exp" / "tensorboard")
    assert len(visible) == len(set(visible)), "a step is shown twice"
    assert sorted(s for t, s in visible if t == "epoch/dev_loss")[-1] == \
        load_checkpoint(runs["folders"]["ref"] / "exp" / f"epoch_{EPOCHS}.pt")["step"]


def test_resume_falls_back_past_an_unreadable_newest_checkpoint(runs):
    result = runs["fallback"]
    assert result.returncode == 0, _describe(result)
    exp = runs["folders"]["fallback"] / "exp"
    damaged = exp / f"epoch_{EPOCHS}.pt.unreadable"
    assert damaged.is_file(), "the damaged checkpoint is kept, renamed"
    line = next(l for l in result.stdout.splitlines() if "unreadable" in l)
    assert f"epoch_{EPOCHS}.pt" in line and "truncated" in line, line
    assert f"resumed from exp/epoch_{EPOCHS - 1}.pt" in result.stdout
    history = (exp / "config.history.yaml").read_text()
    assert f"epoch_{EPOCHS}.pt" in history and f"from_checkpoint: epoch_{EPOCHS - 1}.pt" in history
    _assert_same_run(exp, runs["folders"]["ref"] / "exp")


def test_tensorboard_purges_the_steps_a_resume_retrains(runs):
    """The fallback resume retrains the last epoch, whose steps the first run had logged: without
    ``purge_step`` TensorBoard would show them twice."""
    tensorboard = runs["folders"]["fallback"] / "exp" / "tensorboard"
    files = _scalar_events(tensorboard)
    assert len(files) == 2
    resumed_step = load_checkpoint(runs["folders"]["fallback"] / "exp" / f"epoch_{EPOCHS - 1}.pt")["step"]
    assert files[1][1] == resumed_step + 1, "the resumed run's event file starts with purge_step"
    raw = files[0][2] + files[1][2]
    assert len(raw) > len(set(raw)), "the retrained epoch's steps were logged twice on disk"
    visible = _visible_steps(tensorboard)
    assert len(visible) == len(set(visible))
    assert sorted(s for t, s in visible if t == "train/loss") == list(range(1, files[1][2][-1][1] + 1))
