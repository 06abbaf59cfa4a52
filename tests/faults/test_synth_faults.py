"""Two concurrent `otalign synth` runs into one folder: one wins, the other fails naming the folder."""

import fcntl
import json
import subprocess
import sys
import time

import pytest
import soundfile as sf


def _locked(path):
    try:
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True


@pytest.mark.slow
def test_concurrent_synth_into_one_folder_never_mixes(tmp_path):
    out = tmp_path / "corpus"
    args = ["--num-utterances", "2", "--num-dev", "1", "--num-test", "1", "--jobs", "1", "--no-progress"]
    cmd = [sys.executable, "-m", "otalign.cli", "synth", str(out), *args]
    first = subprocess.Popen(cmd + ["--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not ((out / ".synth.lock").exists() and _locked(out / ".synth.lock")):
        time.sleep(0.05)
    second = subprocess.run(cmd + ["--seed", "2"], capture_output=True, text=True, timeout=120)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(out) in lines[0] and "another otalign synth" in lines[0]
    assert json.loads((out / "summary.json").read_text())["seed"] == 1
    for split in ("train", "dev", "test_clean", "test_noisy"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            info = sf.info(out / rec["audio_filepath"])
            assert abs(info.frames / info.samplerate - rec["duration"]) < 1e-3
