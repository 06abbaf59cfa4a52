"""Inference export: CTCModel weights + tokenizer + model config, and nothing else.

The PLM, the adapter and the aligner exist only in training (BRIEF.md §1). The exported file is
a ``torch.save`` dict::

    {"format": "otalign-inference-v1",
     "model_config": CTCModel.config,          # vocab_size, preset and every architecture key
     "tokenizer": tokenizer.to_dict(),          # rebuilt with otalign.text.tokenizer.tokenizer_from_dict
     "state_dict": {name: tensor} of CTCModel,  # encoder.* and ctc_head.* only
     "cmvn": {"mean": [...], "std": [...]} | None,   # feature normalisation the model was trained with
     "meta": {...}}                             # provenance copied from the checkpoint (git hash, config)

``load_inference_model`` also reads a checkpoint in the exporter's *input* form (``"model"``,
``"model_config"``, ``"tokenizer"``, e.g. the trainer's ``avg.pt``), filtering it the same way.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from otalign.models.asr import CTCModel
from otalign.text.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "otalign-inference-v1"


# Checkpoint entries copied into "meta" (small, and useful to the results header).
_META_KEYS = ("git_hash", "config", "averaged_epochs", "epoch")


@dataclass
class InferenceModel:
    model: CTCModel  # in eval mode
    tokenizer: Tokenizer
    config: dict[str, Any]
    cmvn: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None


def _ctc_model_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    """The prefix under which a training module stores its CTCModel ('', 'asr.', 'module.asr.', ...)."""
    heads = [k[: -len("ctc_head.weight")] for k in state_dict if k.endswith("ctc_head.weight")]
    if len(heads) != 1:
        raise ValueError(
            f"checkpoint state dict must hold exactly one CTC head (*ctc_head.weight), found {len(heads)}"
        )
    return heads[0]


def inference_state(ckpt_state: dict[str, Any]) -> dict[str, Any]:
    """The exported dict (see the module docstring) built in memory from a training checkpoint.

    Args:
        ckpt_state: a dict with ``"model"`` (state dict of the training module, in which the
            CTCModel may sit under any prefix, e.g. ``asr.``; adapter/aligner keys are dropped),
            ``"model_config"`` (``CTCModel.config`` or the kwargs of ``CTCModel``) and
            ``"tokenizer"`` (``tokenizer.to_dict()``); optional ``"cmvn"`` (dict with mean/std).

    Raises ValueError if a CTCModel weight is missing or mis-shaped.
    """
    for key in ("model", "model_config", "tokenizer"):
        if key not in ckpt_state:
            raise ValueError(f"checkpoint has no {key!r} entry (keys: {sorted(ckpt_state)})")
    full = ckpt_state["model"]
    prefix = _ctc_model_prefix(full)
    reference = CTCModel(**ckpt_state["model_config"])  # rebuilds from config; also validates it
    config = dict(reference.config)
    state = {}
    for name, ref in reference.state_dict().items():
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
    cmvn = ckpt_state.get("cmvn")
    if cmvn is not None and not isinstance(cmvn, dict):
        cmvn = cmvn.to_dict() if hasattr(cmvn, "to_dict") else {"mean": list(cmvn.mean), "std": list(cmvn.std)}
    if cmvn is not None and not {"mean", "std"} <= set(cmvn):
        raise ValueError(f"checkpoint 'cmvn' must hold 'mean' and 'std', got keys {sorted(cmvn)}")
    meta = {k: ckpt_state[k] for k in _META_KEYS if k in ckpt_state}
    return {"format": FORMAT, "model_config": config, "tokenizer": tok_dict, "state_dict": state,
            "cmvn": cmvn, "meta": meta}


def export_inference_model(ckpt_state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Write the inference-only model of a training checkpoint (see :func:`inference_state`) to
    ``path`` atomically; returns the exported dict."""
    out = inference_state(ckpt_state)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out


def load_inference_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """Load an exported model (or a training checkpoint in the exporter's input form)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"inference model {p} does not exist")
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # A checkpoint of ours holding a non-tensor object (e.g. numpy CMVN stats): trusted input.
        d = torch.load(p, map_location="cpu", weights_only=False)
    return inference_model_from_state(d, source=str(p), device=device)


def inference_model_from_state(d: Any, source: str = "<dict>", device: str | torch.device = "cpu") -> InferenceModel:
    """Build the model from an exported dict, or from the exporter's input form."""
    if isinstance(d, dict) and d.get("format") != FORMAT and {"model", "model_config", "tokenizer"} <= set(d):
        d = inference_state(d)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{source} is not an otalign inference model (format {d.get('format') if isinstance(d, dict) else None!r})")
    model = CTCModel(**d["model_config"])
    model.load_state_dict(d["state_dict"], strict=True)
    model.to(device).eval()
    return InferenceModel(model, tokenizer_from_dict(d["tokenizer"], source=source), d["model_config"],
                          d.get("cmvn"), d.get("meta"))
