"""``otalign train`` with a kill -9 planted at one point of the run (used by test_kill.py).

    OTALIGN_KILL=step:K      SIGKILL itself right after the K-th optimizer step of this process
                             (mid-epoch: after optimizer.step, before scheduler.step)
    OTALIGN_KILL=mid_save    SIGKILL between the two files of the first checkpoint this process
                             writes (epoch_N.pt and its epoch_N.json sidecar)
    OTALIGN_KILL=torn        SIGKILL while the first checkpoint is being written: its temporary
                             file is left half written
    OTALIGN_KILL=after_save  SIGKILL right after the first checkpoint and its sidecar are written
                             (before the TensorBoard flush and the epoch line)
    OTALIGN_STEP_PAUSE=S     sleep S seconds after every optimizer step (gives an external
                             ``kill -9`` from the test time to land mid-run; no numeric effect)

Everything else is the real CLI: ``python kill_driver.py train --config ... [--resume]``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _plant(spec: str, pause: float) -> None:
    import torch

    from otalign.train import checkpoint, trainer

    kind, _, arg = spec.partition(":")
    if kind == "step" or pause > 0:
        real_step = torch.optim.AdamW.step
        steps = [0]

        def step(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            steps[0] += 1
            if kind == "step" and steps[0] == int(arg):
                _die()
            if pause > 0:
                time.sleep(pause)
            return out

        torch.optim.AdamW.step = step
    if kind in ("mid_save", "torn"):
        real_write = checkpoint._atomic_write

        def atomic_write(path: Path, write) -> None:
            if kind == "torn" and path.name.endswith(".pt"):
                tmp = path.with_name(path.name + ".tmp")
                write(tmp)
                with open(tmp, "r+b") as f:  # the kill came while the bytes were going out
                    f.truncate(tmp.stat().st_size // 2)
                _die()
            real_write(path, write)
            if kind == "mid_save":
                _die()

        checkpoint._atomic_write = atomic_write
    if kind == "after_save":
        real_save = trainer.save_checkpoint

        def save_checkpoint(*args, **kwargs):
            out = real_save(*args, **kwargs)
            _die()
            return out

        trainer.save_checkpoint = save_checkpoint
    elif kind not in ("", "step", "mid_save", "torn"):
        raise SystemExit(f"kill_driver: unknown OTALIGN_KILL={spec!r}")


def main() -> int:
    _plant(os.environ.get("OTALIGN_KILL", ""), float(os.environ.get("OTALIGN_STEP_PAUSE", "0") or 0))
    from otalign.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
