"""Inference export: CTCModel weights + tokenizer + model config, and nothing else.

The PLM, the adapter and the aligner exist only in training (docs/architecture.md). The exported file is
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
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from otalign.models.asr import CTCModel
from otalign.text.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "otalign-inference-v1"


# What a training checkpoint (epoch_N.pt) must hold to be resumed or evaluated.
TRAIN_KEYS = ("trainable", "optimizer", "scheduler", "epoch", "step", "config", "tokenizer")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, empty, truncated, foreign or incomplete (one line, names the file)."""


def load_checkpoint(path: str | os.PathLike, require: tuple[str, ...] = (),
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an otalign checkpoint safely: ``torch.load(weights_only=True)``, so a file from elsewhere
    cannot run code, and every way a file can be wrong becomes one :class:`CheckpointError` line.

    Accepted: a training checkpoint (``"trainable"``), an inference export (``"format"``) or the
    exporter's input form (``"model"`` + ``"model_config"``). ``require`` names keys that must be there.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warning on foreign pickles
            d = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        detail = text.split("Unsupported global:")[-1].split("\n")[0].strip(" .") if "Unsupported global:" in text \
            else "not a weights-only pickle"
        raise CheckpointError(f"checkpoint {p} holds objects other than tensors and plain containers "
                              f"(refused: loading it could run code; {detail[:120]}); "
                              f"it was not written by otalign") from None
    except Exception as error:  # noqa: BLE001 - every torch.load failure is reported, as one line
        is_zip = zipfile.is_zipfile(p)
        if is_zip or "zip archive" in str(error) or "central directory" in str(error):
            what = "truncated or damaged (incomplete zip archive)" if not is_zip else f"damaged ({type(error).__name__})"
        else:
            what = f"not a PyTorch checkpoint ({type(error).__name__} reading it)"
        raise CheckpointError(f"checkpoint {p} ({size} bytes) is {what}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"checkpoint {p} is not an otalign checkpoint (it holds a {type(d).__name__}, not a dict)")
    if not ("trainable" in d or d.get("format") == FORMAT or {"model", "model_config"} <= set(d)):
        raise CheckpointError(f"checkpoint {p} is not an otalign checkpoint (keys: {sorted(map(str, d))[:8]})")
    missing = [k for k in require if k not in d]
    if missing:
        raise CheckpointError(f"checkpoint {p} is incomplete: it lacks {', '.join(map(repr, missing))}")
    return d


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
    return inference_model_from_state(load_checkpoint(p), source=str(p), device=device)


def inference_model_from_state(d: Any, source: str = "<dict>", device: str | torch.device = "cpu") -> InferenceModel:
    """Build the model from an exported dict, or from the exporter's input form."""
    if isinstance(d, dict) and d.get("format") != FORMAT and {"model", "model_config", "tokenizer"} <= set(d):
        try:
            d = inference_state(d)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not an otalign inference model "
                              f"(format {d.get('format') if isinstance(d, dict) else None!r})")
    missing = [k for k in ("model_config", "state_dict", "tokenizer") if k not in d]
    if missing:
        raise CheckpointError(f"{source} is incomplete: it lacks {', '.join(map(repr, missing))}")
    try:
        model = CTCModel(**d["model_config"])
        model.load_state_dict(d["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{source}: its weights do not fit its model_config ({first[:200]})") from None
    model.to(device).eval()
    return InferenceModel(model, tokenizer_from_dict(d["tokenizer"], source=source), d["model_config"],
                          d.get("cmvn"), d.get("meta"))
