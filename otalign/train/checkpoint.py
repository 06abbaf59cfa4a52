"""Per-epoch checkpoints with a JSON metrics sidecar, resume, and n-best averaging.

``epoch_N.pt`` holds everything needed to resume; ``epoch_N.json`` holds its metrics so that
selection and averaging never load a checkpoint just to read a number (WeNet's yaml sidecar).
Writes are atomic (temp file + rename), so a run killed mid-save never leaves a corrupt file, and the
sidecar is written before its checkpoint, so every ``epoch_N.pt`` on disk has its metrics.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from otalign.models.export import load_checkpoint

_EPOCH_PATTERN = re.compile(r"epoch_(\d+)\.pt$")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(exp_dir: str | Path, epoch: int, state: dict[str, Any], metrics: dict[str, Any],
                    keep: int = 5) -> Path:
    """Write ``epoch_{epoch}.pt`` and ``epoch_{epoch}.json``; prune all but the ``keep`` best by dev loss."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    ckpt = exp_dir / f"epoch_{epoch}.pt"
    sidecar = exp_dir / f"epoch_{epoch}.json"
    # The sidecar first: a kill between the two writes then leaves a sidecar without its checkpoint
    # (ignored by ranking; --resume redoes the epoch and rewrites both). The other order left a
    # checkpoint that --resume continued from but that ranking, pruning and averaging never saw.
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps({"epoch": epoch, **metrics}, indent=2)))
    _atomic_write(ckpt, lambda p: torch.save(state, p))
    if keep > 0:
        ranked = rank_checkpoints(exp_dir)
        for stale in ranked[keep:]:
            # The newest checkpoint is always kept: --resume needs it.
            if stale["epoch"] != epoch:
                (exp_dir / f"epoch_{stale['epoch']}.pt").unlink(missing_ok=True)
    return ckpt


def list_epochs(exp_dir: str | Path) -> list[int]:
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in exp_dir.iterdir() if (m := _EPOCH_PATTERN.match(p.name)))


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    epochs = list_epochs(exp_dir)
    return Path(exp_dir) / f"epoch_{epochs[-1]}.pt" if epochs else None


class ExpDirError(ValueError):
    """An exp_dir that already holds a run, or a --resume that would mix two configs (one line)."""


# What `otalign train` writes into an exp_dir: the files that make it "hold a run". --overwrite
# removes exactly these (and nothing else: a user's own files and any decode/ folder stay).
RUN_FILE_PATTERNS = ("config.yaml", "config.history.yaml", "cmvn.json", "cmvn.json.tmp", "tokenizer.json",
                     "avg.pt", "avg.pt.tmp", "avg.json", "epoch_*.pt", "epoch_*.json", "epoch_*.tmp",
                     "epoch_*.pt.unreadable")
RUN_DIRS = ("tensorboard",)


def run_artifacts(exp_dir: str | Path) -> list[Path]:
    """The files and folders of a previous training run in ``exp_dir`` (sorted; empty if none)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = {p for pattern in RUN_FILE_PATTERNS for p in exp_dir.glob(pattern)}
    found |= {exp_dir / d for d in RUN_DIRS if (exp_dir / d).exists() or (exp_dir / d).is_symlink()}
    return sorted(found)


def clear_run(exp_dir: str | Path) -> list[Path]:
    """Remove the previous run's files (:func:`run_artifacts`) from ``exp_dir``; returns what went.
    Never follows a link out of ``exp_dir``: a linked file or folder is unlinked, not emptied."""
    import shutil

    removed = run_artifacts(exp_dir)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed


def newest_readable_checkpoint(exp_dir: str | Path, map_location: Any = "cpu", quarantine: bool = True
                               ) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest ``epoch_N.pt`` that loads, its content, and one line per newer file that did not.

    An unreadable checkpoint is renamed ``epoch_N.pt.unreadable`` (kept for inspection, never
    averaged or resumed from) when ``quarantine`` is set.
    """
    from otalign.models.export import TRAIN_KEYS, CheckpointError

    exp_dir = Path(exp_dir)
    problems: list[str] = []
    for epoch in reversed(list_epochs(exp_dir)):
        path = exp_dir / f"epoch_{epoch}.pt"
        try:
            state = load_checkpoint(path, require=TRAIN_KEYS, map_location=map_location)
            if state["epoch"] != epoch:
                raise CheckpointError(f"checkpoint {path} holds epoch {state['epoch']}, not {epoch}")
            return path, state, problems
        except CheckpointError as error:
            problems.append(str(error))
            if quarantine:
                os.replace(path, path.with_name(path.name + ".unreadable"))
    return None, None, problems


def read_sidecars(exp_dir: str | Path) -> list[dict[str, Any]]:
    exp_dir = Path(exp_dir)
    return sorted((json.loads(p.read_text()) for p in exp_dir.glob("epoch_*.json")), key=lambda m: m["epoch"])


def rank_checkpoints(exp_dir: str | Path, metric: str = "dev_loss") -> list[dict[str, Any]]:
    """Sidecars of checkpoints still on disk, best (lowest ``metric``) first."""
    exp_dir = Path(exp_dir)
    present = [m for m in read_sidecars(exp_dir) if (exp_dir / f"epoch_{m['epoch']}.pt").exists()]
    return sorted(present, key=lambda m: (m.get(metric, float("inf")), -m["epoch"]))


def average_checkpoints(paths: list[Path], key: str = "model") -> dict[str, torch.Tensor]:
    """Element-wise mean of ``state[key]`` over checkpoints (integer buffers taken from the last)."""
    if not paths:
        raise ValueError("average_checkpoints: no checkpoint paths given")
    averaged: dict[str, torch.Tensor] = {}
    for index, path in enumerate(paths):
        weights = load_checkpoint(path, require=(key,))[key]
        for name, tensor in weights.items():
            if not tensor.is_floating_point():
                averaged[name] = tensor.clone()
            elif index == 0:
                averaged[name] = tensor.clone().double()
            else:
                averaged[name] += tensor.double()
    return {name: (t / len(paths)).float() if t.is_floating_point() else t for name, t in averaged.items()}
