"""Figures for alignment as detection (matplotlib, Agg backend: no display needed).

- :func:`plot_plan`: heatmap of one plan, x = time in seconds, y = tokens (wordpiece strings),
  ground-truth word spans as boxes, annotated silence shaded grey and noise shaded orange.
- :func:`plot_aligner_panels`: one figure, one such panel per aligner, same utterance.
- :func:`plot_pr_curves`: precision vs token recall and vs coverage (points labelled by rho or
  m), and precision / recall / coverage / nonspeech mass against rho, one line per eps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from otalign.align.aligners import ALIGNERS  # noqa: E402

__all__ = ["plot_plan", "plot_aligner_panels", "plot_pr_curves", "pr_figure"]

_SHADE = {"silence": ("0.6", 0.25), "noise": ("tab:orange", 0.25)}


def _as_array(plan) -> np.ndarray:
    return np.asarray(plan.detach().cpu() if hasattr(plan, "detach") else plan, dtype=np.float64)


def plot_plan(ax, plan, example, title: str = "", show_tokens: bool = True, normalise: str = "token"):
    """Draw one (T, N) plan of ``example`` (an ``AlignmentExample``-like object) on ``ax``.

    Args:
        normalise: ``token`` divides each token's column by its maximum (every row of the image
            then shows where that token's mass lies, whatever its total); ``global`` divides by the
            plan's maximum (shows how much mass each token got); ``none`` plots raw values.
    """
    p = _as_array(plan)[: example.num_frames, : example.num_tokens]
    if normalise == "token":
        p = p / np.maximum(p.max(axis=0, keepdims=True), 1e-30)
    elif normalise == "global":
        p = p / max(p.max(), 1e-30)
    elif normalise != "none":
        raise ValueError(f"normalise must be 'token', 'global' or 'none', got {normalise!r}")
    frame_s = example.frame_s
    duration = example.num_frames * frame_s
    image = ax.imshow(p.T, aspect="auto", interpolation="nearest", cmap="Blues",
                      extent=(0.0, duration, example.num_tokens - 0.5, -0.5), vmin=0.0)
    for span in example.nonspeech:
        color, alpha = _SHADE.get(span["kind"], ("0.6", 0.25))
        ax.axvspan(span["start"], span["end"], color=color, alpha=alpha, lw=0)
    word_index = np.asarray(example.word_index)
    for w, (start_s, end_s) in enumerate(example.word_spans):
        rows = np.nonzero(word_index == w)[0]
        if len(rows) == 0:
            continue
        ax.add_patch(Rectangle((start_s, rows[0] - 0.5), end_s - start_s, rows[-1] - rows[0] + 1.0,
                               fill=False, edgecolor="tab:red", lw=1.0))
    ax.set_xlim(0.0, duration)
    ax.set_xlabel("time (s)")
    if show_tokens:  # panels sharing the y axis share these labels: set them on one panel only
        ax.set_yticks(range(example.num_tokens))
        ax.set_yticklabels(example.token_strings, fontsize=7)
        ax.set_ylabel("tokens (wordpieces)")
    if title:
        ax.set_title(title, fontsize=9)
    return image


def plot_aligner_panels(example, plans: Mapping[str, object], path: str | Path, metrics: Mapping[str, dict] | None = None,
                        dpi: int = 90) -> Path:
    """One figure with a panel per aligner on the same utterance; writes ``path`` (PNG).

    ``metrics`` (optional) maps a panel label to a dict with ``precision`` and ``token_recall``
    shown in the panel title.
    """
    labels = list(plans)
    if not labels:
        raise ValueError("plans is empty")
    cols = min(len(labels), 3)
    rows = math.ceil(len(labels) / cols)
    width = 4.2 * cols + 0.8
    height = max(2.5, 0.22 * example.num_tokens + 1.3) * rows
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, sharey=True)
    for k, label in enumerate(labels):
        ax = axes[k // cols][k % cols]
        title = label
        if metrics and label in metrics:
            m = metrics[label]
            title += f"\nP={m['precision']:.2f} R={m['token_recall']:.2f} cov={m['coverage']:.2f}"
        plot_plan(ax, plans[label], example, title, show_tokens=(k % cols == 0))
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{example.id}: \"{example.text}\"  (boxes: true word spans; grey: silence; orange: noise)",
                 fontsize=9)
    return _save(fig, path, dpi)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:g}"


def plot_pr_curves(rows: Sequence[Mapping], path: str | Path, dpi: int = 90) -> Path:
    """Draw :func:`pr_figure` of ``rows`` into ``path``."""
    return _save(pr_figure(rows), path, dpi)


def pr_figure(rows: Sequence[Mapping]):
    """Precision-recall over the sweep (rows of :func:`otalign.align.sweep.sweep`); writes ``path``.

    Left: precision against token recall. Middle: precision against coverage@0.5 (the stricter
    notion of recall: at least half of a token's mass inside its word). In both, ``uot`` points are
    joined in rho order and labelled by rho, ``partial`` points labelled by m, ``ot`` / ``tot``
    single markers; one colour per eps; the dashed grey line is the speech fraction (where balanced
    OT's precision must sit); the dotted black line is the uniform plan's precision (chance level). Right: ``uot`` precision (solid), coverage (dashed), token recall
    (dash-dot) and mass on annotated nonspeech (dotted) against rho, log scale; the thin horizontal
    line is balanced OT's precision at the same eps. The legends sit below the panels, never on
    a point: a trained model's points lie low (precision ~0.1), where a legend inside would hide them.
    """
    if not rows:
        raise ValueError("rows is empty")
    chance = [r for r in rows if r["aligner"] == "uniform"]
    rows = [r for r in rows if r["aligner"] != "uniform"]
    if not rows:
        raise ValueError("rows hold no aligner configuration")
    epsilons = sorted({r["eps"] for r in rows})
    colors = {eps: plt.cm.viridis(k / max(len(epsilons) - 1, 1) * 0.85) for k, eps in enumerate(epsilons)}
    markers = {"ot": "s", "tot": "D", "uot": "o", "partial": "^"}
    fig, (ax_pr, ax_cov, ax_rho) = plt.subplots(1, 3, figsize=(15.5, 6.0))
    for ax, recall_key, xlabel in ((ax_pr, "token_recall", "token recall (peak frame inside the word)"),
                                   (ax_cov, "coverage", "coverage@0.5 (>= half the token mass inside the word)")):
        for eps in epsilons:
            for aligner in ("uot", "partial", "ot", "tot"):
                sel = [r for r in rows if r["aligner"] == aligner and r["eps"] == eps]
                if not sel:
                    continue
                key = ALIGNERS[aligner].knob
                if key:
                    sel = sorted(sel, key=lambda r: r[key])
                style = "-" if aligner == "uot" else (":" if aligner == "partial" else "none")
                ax.plot([r[recall_key] for r in sel], [r["precision"] for r in sel], marker=markers[aligner],
                        linestyle=style, color=colors[eps], ms=5, label=f"{aligner} eps={eps:g}")
                if aligner == "uot" or (aligner == "partial" and ax is ax_cov):
                    prefix = "rho=" if aligner == "uot" else "m="
                    for r in sel:
                        ax.annotate(prefix + _fmt(r[key]), (r[recall_key], r["precision"]), fontsize=6,
                                    xytext=(3, 2), textcoords="offset points", color=colors[eps])
        for r in chance:  # a level, not a point: its recall (~0) would squash the x axis
            ax.axhline(r["precision"], color="k", lw=0.8, ls=":", label="uniform plan (chance precision)")
        speech = [r.get("speech_fraction") for r in rows if r.get("speech_fraction") is not None]
        if speech:
            ax.axhline(speech[0], color="0.5", lw=0.8, ls="--")
        low = min(r[recall_key] for r in rows)
        ax.set_xlim(min(low - 0.03, 0.8), 1.02)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("precision (mass inside the right word)")
        ax.grid(alpha=0.3)
    ax_pr.set_title("precision vs token recall", fontsize=10)
    ax_cov.set_title("precision vs coverage@0.5", fontsize=10)
    ax_pr.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(0.0, -0.14), borderaxespad=0.0)
    for eps in epsilons:
        uot = sorted([r for r in rows if r["aligner"] == "uot" and r["eps"] == eps and math.isfinite(r["rho_frames"])],
                     key=lambda r: r["rho_frames"])
        if not uot:
            continue
        rhos = [r["rho_frames"] for r in uot]
        ax_rho.plot(rhos, [r["precision"] for r in uot], "-o", color=colors[eps], ms=4)
        ax_rho.plot(rhos, [r["coverage"] for r in uot], "--", color=colors[eps])
        ax_rho.plot(rhos, [r["token_recall"] for r in uot], "-.", color=colors[eps], lw=0.8)
        ax_rho.plot(rhos, [r["mass_on_nonspeech"] for r in uot], ":", color=colors[eps])
        ot = [r for r in rows if r["aligner"] == "ot" and r["eps"] == eps]
        if ot:
            ax_rho.axhline(ot[0]["precision"], color=colors[eps], lw=0.6, alpha=0.6)
    ax_rho.set_xscale("log")
    ax_rho.set_xlabel("rho_frames (uot)")
    ax_rho.set_ylabel("fraction")
    ax_rho.set_ylim(-0.02, 1.02)
    ax_rho.set_title("uot against rho (thin line: balanced ot precision)", fontsize=10)
    ax_rho.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.2", ls=ls, marker=mk, ms=4, label=label) for ls, mk, label in
               (("-", "o", "precision"), ("--", "", "coverage@0.5"), ("-.", "", "token recall"),
                (":", "", "mass on nonspeech"))]
    handles += [Line2D([], [], color=colors[eps], lw=3, label=f"eps={eps:g}") for eps in epsilons]
    ax_rho.legend(handles=handles, fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(0.0, -0.14),
                  borderaxespad=0.0)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
