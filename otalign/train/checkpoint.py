"""Per-epoch checkpoints with a JSON metrics sidecar, resume, and n-best averaging.

``epoch_N.pt`` holds everything needed to resume; ``epoch_N.json`` holds its metrics so that
selection and averaging never load a checkpoint just to read a number (WeNet's yaml sidecar).
Writes are atomic (temp file + rename), so a run killed mid-save never leaves a corrupt file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

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
    _atomic_write(ckpt, lambda p: torch.save(state, p))
    sidecar = exp_dir / f"epoch_{epoch}.json"
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps({"epoch": epoch, **metrics}, indent=2)))
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
        weights = torch.load(path, map_location="cpu", weights_only=False)[key]
        for name, tensor in weights.items():
            if not tensor.is_floating_point():
                averaged[name] = tensor.clone()
            elif index == 0:
                averaged[name] = tensor.clone().double()
            else:
                averaged[name] += tensor.double()
    return {name: (t / len(paths)).float() if t.is_floating_point() else t for name, t in averaged.items()}
