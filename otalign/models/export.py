"""Inference export: CTCModel weights + tokenizer + model config, and nothing else.

The PLM, the adapter and the aligner exist only in training (BRIEF.md §1). The exported file is
a ``torch.save`` dict::

    {"format": "otalign-inference-v1",
     "model_config": CTCModel.config,          # vocab_size, preset and every architecture key
     "tokenizer": tokenizer.to_dict(),          # rebuilt with otalign.text.tokenizer.tokenizer_from_dict
     "state_dict": {name: tensor} of CTCModel}  # encoder.* and ctc_head.* only
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from otalign.models.asr import CTCModel
from otalign.text.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "otalign-inference-v1"


@dataclass
class InferenceModel:
    model: CTCModel  # in eval mode
    tokenizer: Tokenizer
    config: dict[str, Any]


def _ctc_model_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    """The prefix under which a training module stores its CTCModel ('', 'asr.', 'module.asr.', ...)."""
    heads = [k[: -len("ctc_head.weight")] for k in state_dict if k.endswith("ctc_head.weight")]
    if len(heads) != 1:
        raise ValueError(
            f"checkpoint state dict must hold exactly one CTC head (*ctc_head.weight), found {len(heads)}"
        )
    return heads[0]


def export_inference_model(ckpt_state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Write the inference-only model from a training checkpoint.

    Args:
        ckpt_state: a dict with ``"model"`` (state dict of the training module, in which the
            CTCModel may sit under any prefix, e.g. ``asr.``; adapter/aligner keys are dropped),
            ``"model_config"`` (``CTCModel.config``) and ``"tokenizer"`` (``tokenizer.to_dict()``).
        path: output file.

    Returns the exported dict. Raises ValueError if a CTCModel weight is missing or mis-shaped.
    """
    for key in ("model", "model_config", "tokenizer"):
        if key not in ckpt_state:
            raise ValueError(f"checkpoint has no {key!r} entry (keys: {sorted(ckpt_state)})")
    full = ckpt_state["model"]
    prefix = _ctc_model_prefix(full)
    config = dict(ckpt_state["model_config"])
    reference = CTCModel(**config)  # rebuilds from config; also validates it
    wanted = reference.state_dict()
    state = {}
    for name, ref in wanted.items():
        src = prefix + name
        if src not in full:
            raise ValueError(f"checkpoint is missing CTCModel weight {src!r}")
        if tuple(full[src].shape) != tuple(ref.shape):
            raise ValueError(f"checkpoint weight {src!r} has shape {tuple(full[src].shape)}, config expects {tuple(ref.shape)}")
        state[name] = full[src].detach().cpu().clone()
    tokenizer = ckpt_state["tokenizer"]
    tok_dict = tokenizer if isinstance(tokenizer, dict) else tokenizer.to_dict()
    if tokenizer_from_dict(tok_dict).vocab_size != config["vocab_size"]:
        raise ValueError("tokenizer vocab_size does not match model_config['vocab_size']")
    out = {"format": FORMAT, "model_config": config, "tokenizer": tok_dict, "state_dict": state}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out


def load_inference_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """Load an exported model: (CTCModel in eval mode, tokenizer, config)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"inference model {p} does not exist")
    d = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{p} is not an otalign inference model (format {d.get('format') if isinstance(d, dict) else None!r})")
    model = CTCModel(**d["model_config"])
    model.load_state_dict(d["state_dict"], strict=True)
    model.to(device).eval()
    return InferenceModel(model, tokenizer_from_dict(d["tokenizer"], source=str(p)), d["model_config"])
