"""Sweeps over the degree of matching (rho, m) and eps, metric tables, and the alignment report.

    rows = sweep(examples, aligners=("ot", "tot", "uot", "partial"), rhos=(0.01, 0.1, 1.0), epsilons=(0.05,))
    write_table(rows, "exp/align")            # metrics.csv + metrics.md
    run_alignment_report("exp/align", examples, ...)   # + pr_curve.png + heatmaps/*.png

Configurations swept, per eps:

- ``ot``: one row (balanced);
- ``tot``: one row per ``order_weights`` entry (balanced + temporal-order prior);
- ``uot``: one row per ``rhos`` entry (``rho_frames``; ``inf`` allowed = balanced);
- ``partial``: one row per ``partial_masses`` entry (m);
- ``uniform`` (unless ``include_chance=False``): the chance level, every token's mass spread
  evenly over all frames.

``attention`` and ``cif`` have trained parameters: they are not part of a training-free sweep.

Every row holds the configuration and the *micro* averages of :mod:`otalign.align.metrics`
(``precision``, ``token_recall``, ``f1``, ``coverage``, mass fractions, ``boundary_error_ms``),
plus ``macro_precision`` / ``macro_token_recall``, the mean ``speech_fraction`` of the
utterances, and the solve time.

``align_command`` is the function behind ``otalign align``; see its docstring for the
``encode_fn`` protocol a trained checkpoint must provide.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from otalign.align.aligners import ALIGNERS, OT_ALIGNER_NAMES, AlignerConfig
from otalign.align.metrics import aggregate_metrics, utterance_metrics
from otalign.align.synthetic import AlignmentExample, collate_examples

__all__ = [
    "sweep",
    "sweep_configs",
    "align_examples",
    "write_table",
    "best_row",
    "run_alignment_report",
    "align_command",
    "trained_teacher",
    "EncodeFn",
    "DEFAULT_RHOS",
    "DEFAULT_EPSILONS",
    "DEFAULT_PARTIAL_MASSES",
]

DEFAULT_RHOS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_EPSILONS = (0.02, 0.05, 0.1)
DEFAULT_PARTIAL_MASSES = (0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_ORDER_WEIGHTS = (0.1,)

TABLE_COLUMNS = (
    "aligner", "eps", "rho_frames", "partial_mass", "order_weight", "precision", "token_recall", "f1",
    "coverage", "mass_outside_words", "mass_on_nonspeech", "mass_on_silence", "mass_on_noise",
    "boundary_error_ms", "macro_precision", "macro_token_recall", "speech_fraction", "num_utterances",
    "num_tokens", "seconds",
)

# A trained checkpoint's encoder, as a callable: manifest utterances -> adapted states at the PLM
# width (B, T, D) and the frame mask (B, T). Frame i covers [frame_s i, frame_s (i+1)) s, where
# frame_s is the model's (``encode_fn.frame_s``; ``otalign.train.evaluate.make_encode_fn`` sets it,
# with ``encode_fn.targets()``, the teacher the checkpoint was trained with).
EncodeFn = Callable[[Sequence], tuple[Tensor, Tensor]]


def sweep_configs(aligners: Sequence[str], rhos: Sequence[float], epsilons: Sequence[float],
                  partial_masses: Sequence[float] = DEFAULT_PARTIAL_MASSES,
                  order_weights: Sequence[float] = DEFAULT_ORDER_WEIGHTS) -> list[dict]:
    """The list of aligner configurations a sweep runs (see the module docstring)."""
    configs = []
    for name in aligners:
        if name not in OT_ALIGNER_NAMES:
            raise ValueError(f"sweeps run training-free aligners {OT_ALIGNER_NAMES}; got {name!r}")
    if not epsilons:
        raise ValueError("epsilons is empty")
    values = {"rho_frames": rhos, "partial_mass": partial_masses, "order_weight": order_weights}
    for eps in epsilons:
        for name in aligners:
            base = dict(aligner=name, eps=float(eps), rho_frames=math.inf, partial_mass=math.nan, order_weight=0.0)
            spec = ALIGNERS[name]
            if spec.knob is None:
                configs.append(base)
                continue
            grid = [base]
            for option in spec.options:
                if not values[option]:
                    raise ValueError(f"the {option} values are empty but {name} is in aligners")
                grid = [{**config, option: float(v)} for config in grid for v in values[option]]
            configs += grid
    return configs


def _aligner_for(config: Mapping, n_iter: int):
    spec = ALIGNERS[config["aligner"]]
    return AlignerConfig(name=config["aligner"], eps=config["eps"], n_iter=n_iter,
                         **{option: config[option] for option in spec.options}).build()


def align_examples(examples: Sequence[AlignmentExample], config: Mapping, n_iter: int = 200,
                   batch_size: int = 32) -> list[Tensor]:
    """Plans (T_u, N_u), one per example, for one aligner configuration (no gradients)."""
    aligner = _aligner_for(config, n_iter)
    plans: list[Tensor] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        frames, frame_mask, tokens, token_mask = collate_examples(chunk)
        with torch.no_grad():
            plan = aligner(frames, frame_mask, tokens, token_mask).plan
        plans += [plan[b, :e.num_frames, :e.num_tokens] for b, e in enumerate(chunk)]
    return plans


def _score(examples: Sequence[AlignmentExample], plans: Sequence[Tensor], coverage_level: float):
    per_utt = [utterance_metrics(p, e.word_index, e.word_spans, e.nonspeech, e.frame_s, coverage_level)
               for e, p in zip(examples, plans)]
    return per_utt, aggregate_metrics(per_utt)


def sweep(
    states_source: Sequence[AlignmentExample] | Callable[[], Sequence[AlignmentExample]],
    aligners: Sequence[str] = ("ot", "tot", "uot", "partial"),
    rhos: Sequence[float] = DEFAULT_RHOS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    partial_masses: Sequence[float] = DEFAULT_PARTIAL_MASSES,
    order_weights: Sequence[float] = DEFAULT_ORDER_WEIGHTS,
    n_iter: int = 200,
    coverage_level: float = 0.5,
    include_chance: bool = True,
) -> list[dict]:
    """Align every example with every configuration and return one row of micro metrics per configuration.

    Args:
        states_source: ``AlignmentExample`` list (frame states at the PLM width, token states,
            timings), or a zero-argument callable returning one.
        aligners, rhos, epsilons, partial_masses, order_weights: the grid (module docstring).
        n_iter: solver iterations per configuration.
        coverage_level: the x of coverage@x.
        include_chance: append a ``uniform`` row: the plan that spreads every token's mass evenly
            over all frames. It is the chance level: an aligner scoring near it has learned nothing
            about where words are.
    """
    examples = list(states_source() if callable(states_source) else states_source)
    if not examples:
        raise ValueError("states_source gave no examples")
    speech_fraction = sum(e.speech_fraction for e in examples) / len(examples)
    rows = []
    configs = sweep_configs(aligners, rhos, epsilons, partial_masses, order_weights)
    if include_chance:
        configs.append(dict(aligner="uniform", eps=math.nan, rho_frames=math.nan, partial_mass=math.nan,
                            order_weight=0.0))
    for config in configs:
        start = time.perf_counter()
        if config["aligner"] == "uniform":
            plans = [torch.full((e.num_frames, e.num_tokens), 1.0 / max(e.num_frames * e.num_tokens, 1))
                     for e in examples]
        else:
            plans = align_examples(examples, config, n_iter)
        seconds = time.perf_counter() - start
        _, agg = _score(examples, plans, coverage_level)
        row = dict(config)
        for name in ("precision", "token_recall", "f1", "coverage", "mass_outside_words", "mass_on_nonspeech",
                     "mass_on_silence", "mass_on_noise", "boundary_error_ms"):
            row[name] = agg[f"micro_{name}"]
        row.update(macro_precision=agg["macro_precision"], macro_token_recall=agg["macro_token_recall"],
                   speech_fraction=speech_fraction, num_utterances=len(examples), num_tokens=agg["num_tokens"],
                   seconds=seconds)
        rows.append(row)
    return rows


def best_row(rows: Sequence[Mapping], aligner: str, eps: float | None = None, min_recall: float = 0.95) -> dict | None:
    """The row of ``aligner`` (at ``eps`` if given) with the highest precision among those with
    token recall >= ``min_recall``; if none reaches it, the row with the highest F1."""
    sel = [r for r in rows if r["aligner"] == aligner and (eps is None or r["eps"] == eps)]
    if not sel:
        return None
    good = [r for r in sel if r["token_recall"] >= min_recall]
    if good:
        return dict(max(good, key=lambda r: r["precision"]))
    return dict(max(sel, key=lambda r: r["f1"]))


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def write_table(rows: Sequence[Mapping], out_dir: str | Path, name: str = "metrics") -> tuple[Path, Path]:
    """Write ``<name>.csv`` (full precision) and ``<name>.md`` (a markdown table) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in columns})
    shown = [c for c in columns if c not in ("mass_on_silence", "mass_on_noise", "num_utterances", "num_tokens")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in shown) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


_KNOB_LABELS = {"rho_frames": "rho", "partial_mass": "m", "order_weight": "w"}


def _panel_label(row: Mapping) -> str:
    value = ""
    for option in ALIGNERS[row["aligner"]].options:
        shown = _cell(row[option]) if option == "rho_frames" else f"{row[option]:g}"  # rho may be inf
        value += f" {_KNOB_LABELS[option]}={shown}"
    return f"{row['aligner']}{value} eps={row['eps']:g}"


def run_alignment_report(
    out_dir: str | Path,
    examples: Sequence[AlignmentExample],
    aligners: Sequence[str] = ("ot", "tot", "uot", "partial"),
    rhos: Sequence[float] = DEFAULT_RHOS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    partial_masses: Sequence[float] = DEFAULT_PARTIAL_MASSES,
    order_weights: Sequence[float] = DEFAULT_ORDER_WEIGHTS,
    num_heatmaps: int = 2,
    heatmap_eps: float | None = None,
    n_iter: int = 200,
) -> dict:
    """Sweep, then write ``metrics.csv``, ``metrics.md``, ``pr_curve.png`` and ``heatmap_<id>.png``.

    Heatmaps show the first ``num_heatmaps`` utterances, one panel per aligner, each at its best
    configuration (:func:`best_row`) at ``heatmap_eps`` (default: the eps whose best ``uot`` row has
    the highest precision); ``uot`` is also shown at its largest rho, to show the effect of rho.
    Returns ``{"rows", "table_csv", "table_md", "pr_curve", "heatmaps", "best"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep(examples, aligners, rhos, epsilons, partial_masses, order_weights, n_iter)
    csv_path, md_path = write_table(rows, out)
    pr_path = None
    if any(r["aligner"] in ("uot", "partial") for r in rows) or len(rows) > 1:
        from otalign.align.plots import plot_pr_curves

        pr_path = plot_pr_curves(rows, out / "pr_curve.png")
    if heatmap_eps is None:
        candidates = [best_row(rows, "uot", eps) for eps in epsilons]
        candidates = [c for c in candidates if c is not None]
        heatmap_eps = max(candidates, key=lambda r: (r["token_recall"] >= 0.95, r["precision"]))["eps"] if candidates \
            else epsilons[0]
    panels = []
    for name in aligners:
        best = best_row(rows, name, heatmap_eps)
        if best is not None:
            panels.append(best)
        if name == "uot":
            uot_rows = sorted([r for r in rows if r["aligner"] == "uot" and r["eps"] == heatmap_eps],
                              key=lambda r: r["rho_frames"])
            if uot_rows and uot_rows[-1]["rho_frames"] != (best or {}).get("rho_frames"):
                panels.append(uot_rows[-1])
    heatmaps = []
    if num_heatmaps > 0 and panels:
        from otalign.align.plots import plot_aligner_panels

        shown = list(examples[:num_heatmaps])
        plans_by_panel = {_panel_label(r): align_examples(shown, r, n_iter) for r in panels}
        for k, example in enumerate(shown):
            plans = {label: plans_by_panel[label][k] for label in plans_by_panel}
            metrics = {label: utterance_metrics(p, example.word_index, example.word_spans, example.nonspeech,
                                                example.frame_s).as_dict() for label, p in plans.items()}
            heatmaps.append(plot_aligner_panels(example, plans, out / f"heatmap_{example.id}.png", metrics))
    return {"rows": rows, "table_csv": csv_path, "table_md": md_path, "pr_curve": pr_path, "heatmaps": heatmaps,
            "best": {name: best_row(rows, name) for name in aligners}}


def examples_from_encoder(utterances: Sequence, encode_fn: EncodeFn, teacher, frame_s: float | None = None
                          ) -> list[AlignmentExample]:
    """``AlignmentExample`` objects from a trained encoder's adapted states and real word timings.

    ``frame_s``: seconds per encoder frame; ``None`` = ``encode_fn.frame_s`` (the model's own).
    """
    if frame_s is None:
        frame_s = getattr(encode_fn, "frame_s", None)
        if frame_s is None:
            raise ValueError("the frame length of the encoder is unknown: give frame_s= or an encode_fn with a "
                             "frame_s attribute (otalign.train.evaluate.make_encode_fn sets it from the model)")
    rows = [u if isinstance(u, dict) else u.to_dict() for u in utterances]
    for d in rows:
        if not d.get("words"):
            raise ValueError(f"utterance {d.get('id')!r} has no word timings ('words'): cannot score alignments")
    states, mask = encode_fn(list(utterances))
    if states.dim() != 3 or mask.shape != states.shape[:2] or states.shape[0] != len(rows):
        raise ValueError(f"encode_fn must return (B,T,D) states and a (B,T) mask for B={len(rows)} utterances; "
                         f"got {tuple(states.shape)} and {tuple(mask.shape)}")
    out = teacher.encode([d["text"] for d in rows])
    if out.states.shape[-1] != states.shape[-1]:
        raise ValueError(f"encode_fn states have width {states.shape[-1]} but the PLM width is "
                         f"{out.states.shape[-1]}: return the adapter's output")
    examples = []
    for b, d in enumerate(rows):
        t, n = int(mask[b].sum()), int(out.mask[b].sum())
        examples.append(AlignmentExample(
            str(d.get("id", b)), d["text"], states[b, :t].detach().float().cpu(), out.states[b, :n].float(),
            list(out.token_strings[b]), out.word_index[b, :n].long(),
            [(float(w["start"]), float(w["end"])) for w in d["words"]],
            [dict(kind=s["kind"], start=float(s["start"]), end=float(s["end"])) for s in d.get("nonspeech") or []],
            float(frame_s)))
    return examples


def align_command(
    ckpt: str | None,
    manifest: str | None,
    out_dir: str,
    aligners: Sequence[str] = ("ot", "tot", "uot", "partial"),
    rhos: Sequence[float] = DEFAULT_RHOS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    synthetic: bool = False,
    num_utterances: int = 16,
    partial_masses: Sequence[float] = DEFAULT_PARTIAL_MASSES,
    order_weights: Sequence[float] = DEFAULT_ORDER_WEIGHTS,
    encode_fn: EncodeFn | None = None,
    teacher=None,
    num_heatmaps: int = 2,
    seed: int = 0,
    noise_level: float = 0.3,
    nonspeech_mix: float = 0.3,
    n_iter: int = 200,
    frame_s: float | None = None,
) -> dict:
    """Entry point of ``otalign align``: writes the alignment report under ``out_dir``.

    Modes:

    - ``synthetic=True``: no model. States with known correspondence
      (:mod:`otalign.align.synthetic`): over the real word timings of ``manifest`` when given
      (e.g. an eSpeak corpus), else over the generative duration model.
    - a trained model: ``manifest`` (with ``words`` timings) and ``encode_fn`` are required.
      ``encode_fn(utterances) -> (states (B, T, D_plm), mask (B, T))`` receives a list of
      ``otalign.data.manifest.Utterance`` and returns the **adapted** encoder states (the
      ``KnowledgeTransfer.adapter`` output, at the PLM width) with encoder frame ``i`` covering
      ``[frame_s i, frame_s (i+1))`` s. Loading the checkpoint is the caller's job
      (``otalign.train.evaluate.make_encode_fn`` builds ``encode_fn`` from ``ckpt``;
      ``otalign.align`` cannot import it).

    ``teacher`` is an object with ``encode(texts) -> TeacherOutput``. For a trained model it must be
    the teacher the model was trained with, so ``None`` means ``encode_fn.targets()``
    (``make_encode_fn`` attaches the checkpoint's own), else the ``teacher`` section of the config
    stored in ``ckpt``; never a default PLM. ``frame_s``: seconds per encoder frame, ``None`` =
    ``encode_fn.frame_s``. In the synthetic mode ``None`` loads all-MiniLM-L6-v2.
    Returns the dict of :func:`run_alignment_report`.
    """
    if synthetic:
        from otalign.align.synthetic import examples_from_manifest, synthetic_examples

        if manifest is not None:
            utterances = _read_timed(manifest, num_utterances)
            examples = examples_from_manifest(utterances, teacher, seed, noise_level, nonspeech_mix)
        else:
            examples = synthetic_examples(num_utterances, teacher=teacher, seed=seed, noise_level=noise_level,
                                          nonspeech_mix=nonspeech_mix)
    else:
        if manifest is None:
            raise ValueError("manifest is required without synthetic=True (it gives the texts and word timings)")
        if encode_fn is None:
            raise ValueError(f"a trained model needs encode_fn (built from ckpt={ckpt!r} by the caller); "
                             "or pass synthetic=True")
        if teacher is None:
            teacher = trained_teacher(encode_fn, ckpt)
        utterances = _read_timed(manifest, num_utterances)
        examples = examples_from_encoder(utterances, encode_fn, teacher, frame_s)
    return run_alignment_report(out_dir, examples, aligners, rhos, epsilons, partial_masses, order_weights,
                                num_heatmaps, n_iter=n_iter)


def trained_teacher(encode_fn: EncodeFn | None, ckpt: str | None = None):
    """The targets a trained model is scored against: ``encode_fn.targets()`` when the encode
    function carries them (``otalign.train.evaluate.make_encode_fn``), else those of the
    ``teacher`` section of the config stored in the checkpoint ``ckpt``
    (``otalign.text.cache.targets_from_config``, the path training and
    ``train.evaluate.alignment_metrics`` take)."""
    targets = getattr(encode_fn, "targets", None)
    if callable(targets):
        return targets()
    if ckpt is None:
        raise ValueError("a trained model must be scored against the teacher it was trained with: give teacher=, "
                         "ckpt=, or an encode_fn from otalign.train.evaluate.make_encode_fn")
    from otalign.models.export import CheckpointError, load_checkpoint
    from otalign.text.cache import targets_from_config

    state = load_checkpoint(ckpt)
    config = state.get("config") or (state.get("meta") or {}).get("config")
    if not isinstance(config, dict) or not isinstance(config.get("teacher"), dict):
        raise CheckpointError(f"checkpoint {ckpt} holds no training config with a 'teacher' section: the teacher "
                              f"it was trained with is unknown")
    return targets_from_config(config["teacher"])


def _read_timed(manifest: str, num_utterances: int) -> list:
    """The first ``num_utterances`` utterances of ``manifest`` that carry word timings."""
    from otalign.data.manifest import read_manifest

    timed = [u for u in read_manifest(manifest) if u.words]
    if not timed:
        raise ValueError(f"manifest {manifest} has no utterance with word timings ('words')")
    return timed[:num_utterances]
