"""Generate the results page (markdown + plots) from the per-run JSON files under ``results/``.

Nothing here trains or decodes: the page is a pure function of the committed JSON, so anyone can
regenerate it (``otalign experiment --report-only``) and check every number against its source.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otalign.train.budget import cost_line, grid_cost_line

if TYPE_CHECKING:
    from otalign.train.experiment import ExperimentConfig


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else math.nan


def load_results(results_dir: Path, benchmarks: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """benchmark -> system -> list of run results (one per seed), read from ``results_dir/<benchmark>/``.

    Other folders under ``results_dir`` (diagnostics) are not run results and are not read.
    """
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for bench in benchmarks:
        for path in sorted((results_dir / bench).glob("*.json")):
            result = json.loads(path.read_text())
            missing = {"benchmark", "system", "test"} - set(result)
            if missing:
                raise ValueError(f"{path}: not a run result (missing {sorted(missing)})")
            grouped[result["benchmark"]][result["system"]].append(result)
    return grouped


def _rho(result: dict[str, Any]) -> float:
    value = result.get("rho_frames")
    return math.inf if value in ("inf", None) else float(value)


def benchmark_table(systems: dict[str, list[dict[str, Any]]], order: list[str]) -> list[str]:
    test_names = sorted({name for runs in systems.values() for r in runs for name in r["test"]})
    baseline = {name: _mean([r["test"][name]["cer"] for r in systems.get("ctc", []) if name in r["test"]])
                for name in test_names}
    header = ["system", "seeds", "dev CER %"]
    for name in test_names:
        header += [f"{name} CER %", f"{name} WER %", f"{name} rel. CER vs ctc"]
    # Alignment is read on the test set with the most silence/noise, where detection matters.
    align_set = next((n for n in test_names if "noisy" in n), test_names[0] if test_names else None)
    header += [f"align P ({align_set})", "align R", "mass on silence/noise", "epoch s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in [s for s in order if s in systems]:
        runs = systems[system]
        row = [system, str(len(runs)), _mean_std([r["best_dev_cer"] for r in runs])]
        for name in test_names:
            cers = [r["test"][name]["cer"] for r in runs if name in r["test"]]
            row.append(_mean_std(cers))
            row.append(_mean_std([r["test"][name]["wer"] for r in runs if name in r["test"]]))
            base = baseline[name]
            rel = (_mean(cers) - base) / base if base and not math.isnan(base) else math.nan
            row.append("–" if math.isnan(rel) else f"{100 * rel:+.1f}%")
        aligned = [r["alignment"].get(align_set, {}) for r in runs if r.get("alignment")]
        for key in ("micro_precision", "micro_token_recall", "micro_mass_on_nonspeech"):
            row.append(f"{_mean([a.get(key, math.nan) for a in aligned]):.3f}" if aligned else "–")
        row.append(f"{_mean([r['epoch_time_s'] for r in runs]):.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def alignment_note(systems: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Says why the alignment columns are empty, so a '–' is not read as a failed measurement."""
    transfer_runs = [r for runs in systems.values() for r in runs if r.get("aligner", "none") != "none"]
    if not transfer_runs or any(r.get("alignment") for r in transfer_runs):
        return []
    return ["Alignment precision and recall are not scored on this benchmark: its test sets have no "
            "ground-truth word timings (recorded speech), so the alignment columns are empty.", ""]


def paired_p_value(diffs: list[float]) -> float:
    """Two-sided p of a paired t-test (mean difference 0); nan below 2 pairs or when every pair agrees exactly."""
    if len(diffs) < 2 or statistics.pstdev(diffs) == 0:
        return math.nan
    from scipy.stats import ttest_1samp
    return float(ttest_1samp(diffs, 0.0).pvalue)


def paired_table(systems: dict[str, list[dict[str, Any]]], order: list[str], baseline: str = "ctc") -> list[str]:
    """CER change against ``baseline`` *of the same seed*, in CER points: mean ± std over the seeds both have.

    A seed fixes the ASR model's initialisation and the batch order for every system (the transfer
    module is built after the ASR model), so the pairing removes the part of the seed-to-seed spread
    that the systems share. Each cell also counts the seeds on which ``system`` is lower and gives
    the two-sided p of a paired t-test: with three seeds, only a large and steady change reaches a
    small p, which is the point of showing it.
    """
    test_names = sorted({name for runs in systems.values() for r in runs for name in r["test"]})
    base_runs = {r["seed"]: r for r in systems.get(baseline, [])}
    lines = ["| system | paired seeds | " + " | ".join(f"{name} ΔCER (points)" for name in test_names) + " |",
             "|" + "---|" * (len(test_names) + 2)]
    for system in [s for s in order if s in systems and s != baseline]:
        pairs = [(r, base_runs[r["seed"]]) for r in systems[system] if r["seed"] in base_runs]
        if not pairs:
            continue
        cells = []
        for name in test_names:
            diffs = [r["test"][name]["cer"] - b["test"][name]["cer"] for r, b in pairs
                     if name in r["test"] and name in b["test"]]
            if not diffs:
                cells.append("–")
            elif len(diffs) == 1:
                cells.append(f"{100 * diffs[0]:+.2f}")
            else:
                lower = sum(d < 0 for d in diffs)
                cells.append(f"{100 * statistics.mean(diffs):+.2f} ± {100 * statistics.stdev(diffs):.2f} "
                             f"({lower}/{len(diffs)}, p {paired_p_value(diffs):.2f})")
        seeds = ",".join(f"{r['seed']}{'*' if _other_kernel(r, b) else ''}" for r, b in pairs)
        lines.append(f"| {system} | {seeds} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _other_kernel(run: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether two runs are known to come from different kernel builds, where one seed gives other results."""
    return bool(run.get("kernel") and base.get("kernel") and run["kernel"] != base["kernel"])


def uot_systems(systems: dict[str, list[dict[str, Any]]], order: list[str]) -> list[str]:
    """The systems of ``order`` whose runs used the uot aligner (by the recorded aligner, not the name)."""
    return [s for s in order if any(r.get("aligner") == "uot" for r in systems.get(s, []))]


def beyond_spread(diffs: list[float]) -> bool | None:
    """The one meaning of "beyond the seed spread" in the report and the discussion.

    ``diffs`` are paired changes (a system minus its baseline of the same seed, one per seed): they
    are beyond the spread when their mean is larger in size than their std over the seeds, i.e. when
    the paired tables' "mean ± std" does not reach 0. None, not measurable, below two seeds.
    """
    if len(diffs) < 2:
        return None
    return abs(statistics.mean(diffs)) > statistics.stdev(diffs)


def target_table(systems: dict[str, list[dict[str, Any]]], order: list[str],
                 target_reduction: float = 0.15) -> list[str]:
    """The issue's two targets, per test set, for the ``uot`` system with the lowest mean CER.

    1. at least ``target_reduction`` relative CER reduction against plain CTC (on the means);
    2. ahead of balanced ``ot`` beyond the seed spread (:func:`beyond_spread`): the mean paired
       change against ``ot`` of the same seed is negative and larger in size than its own std.
    Rows need at least one uot run and a ctc baseline; the second check needs two or more paired seeds.
    """
    uots = uot_systems(systems, order)
    test_names = sorted({name for s in uots for r in systems[s] for name in r["test"]})
    lines = [f"| test set | best uot (mean CER) | CER % | rel. CER vs ctc | ≥{100 * target_reduction:.0f}% reduction? "
             "| ΔCER vs ot, paired (points) | its std over the seeds (points) | beats ot beyond the spread? |",
             "|" + "---|" * 8]
    for name in test_names:
        def cers(system: str) -> list[float]:
            return [r["test"][name]["cer"] for r in systems.get(system, []) if name in r["test"]]
        ctc_mean = _mean(cers("ctc"))
        candidates = [s for s in uots if cers(s)]
        if math.isnan(ctc_mean) or not candidates:
            continue
        best = min(candidates, key=lambda s: _mean(cers(s)))
        rel = (_mean(cers(best)) - ctc_mean) / ctc_mean
        ot_by_seed = {r["seed"]: r["test"][name]["cer"] for r in systems.get("ot", []) if name in r["test"]}
        diffs = [r["test"][name]["cer"] - ot_by_seed[r["seed"]] for r in systems[best]
                 if name in r["test"] and r["seed"] in ot_by_seed]
        if len(diffs) >= 2:
            delta, spread = statistics.mean(diffs), statistics.stdev(diffs)
            beyond = "yes" if delta < 0 and beyond_spread(diffs) else "no"
            delta_cell, spread_cell = f"{100 * delta:+.2f} ({len(diffs)} seeds)", f"{100 * spread:.2f}"
        else:
            delta_cell = f"{100 * diffs[0]:+.2f} (1 seed)" if diffs else "–"
            spread_cell, beyond = "–", "not measurable (fewer than 2 paired seeds)"
        lines.append(f"| {name} | {best} | {_mean_std(cers(best))} | {100 * rel:+.1f}% | "
                     f"{'yes' if rel <= -target_reduction else 'no'} | {delta_cell} | {spread_cell} | {beyond} |")
    return lines if len(lines) > 2 else []


def rho_families(systems: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """uot runs grouped by everything but rho: ``uot_rho0.3_layer0_w100`` -> family ``uot_rho*_layer0_w100``.

    A curve against rho only makes sense when nothing else changes along it (PLM layer, lambda, ...),
    so each family is its own curve; families with fewer than two rho values are left out.
    """
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, runs in systems.items():
        if re.match(r"uot_rho[0-9.]+", name):
            families[re.sub(r"rho[0-9.]+", "rho*", name, count=1)].extend(runs)
    return {name: runs for name, runs in sorted(families.items()) if len({_rho(r) for r in runs}) >= 2}


def plot_rho(systems: dict[str, list[dict[str, Any]]], out_png: Path, title: str) -> bool:
    """CER (mean ± seed std) and alignment precision/recall against rho, one curve per uot family.

    Returns False, and draws nothing, if no family has two rho values.
    """
    families = rho_families(systems)
    if not families:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    fig, (ax_cer, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    test_names = sorted({name for runs in families.values() for r in runs for name in r["test"]})
    for name in test_names:
        base = _mean([r["test"][name]["cer"] for r in systems.get("ctc", []) if name in r["test"]])
        if not math.isnan(base):
            ax_cer.axhline(100 * base, linestyle="--", linewidth=1, color="grey")
            ax_cer.annotate(f"plain CTC, {name}", (1, 100 * base), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize=7, color="grey")
    first = next((n for n in test_names if "noisy" in n), test_names[0] if test_names else None)
    scored = False
    for family, runs in families.items():
        rhos = sorted({_rho(r) for r in runs})
        for name in test_names:
            per_rho = [[r["test"][name]["cer"] for r in runs if _rho(r) == rho and name in r["test"]] for rho in rhos]
            # the error bar is the seed-to-seed std, the spread any effect of rho must beat
            ax_cer.errorbar(rhos, [100 * _mean(c) for c in per_rho],
                            yerr=[100 * statistics.stdev(c) if len(c) > 1 else 0.0 for c in per_rho],
                            marker="o", capsize=3, label=f"{family}, {name}")
        for key, label in (("micro_precision", "P"), ("micro_token_recall", "R"),
                           ("micro_mass_on_nonspeech", "mass on sil/noise")):
            values = [_mean([r["alignment"].get(first, {}).get(key, math.nan) for r in runs if _rho(r) == rho])
                      for rho in rhos]
            if any(not math.isnan(v) for v in values):
                scored = True
                ax_pr.plot(rhos, values, marker="o", label=f"{family}: {label}")
    ax_cer.set_xlabel("rho_frames (degree of matching)")
    ax_cer.set_ylabel("CER %")
    ax_pr.set_xlabel("rho_frames")
    ax_pr.set_ylabel(f"alignment on {first}")
    if not scored:
        ax_pr.text(0.5, 0.5, f"{first} has no ground-truth word timings:\nalignment not scored",
                   ha="center", va="center", transform=ax_pr.transAxes)
        ax_pr.set_xticks([])
        ax_pr.set_yticks([])
    for ax in (ax_cer, ax_pr) if scored else (ax_cer,):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


def write_report(spec: ExperimentConfig, out_md: Path) -> None:
    discussion = Path(spec.discussion or out_md.parent / "results_discussion.md")
    if spec.discussion and not discussion.is_file():
        raise FileNotFoundError(f"discussion: {discussion} is not a file (named by the experiment config)")
    results_dir = Path(spec.results_dir)
    grouped = load_results(results_dir, list(spec.benchmarks))
    order = list(spec.systems)
    lines = [f"# Results: {spec.name}", "",
             f"Generated by `otalign experiment --report-only` from `{results_dir}/`; every number below is "
             "read from those JSON files (one per run). CER/WER in %, mean ± std over seeds; "
             "'rel. CER vs ctc' compares mean CERs; alignment precision (P) and token recall (R) are "
             "measured with each system's own aligner against ground-truth word spans on the noisy test set, "
             "with the share of transported mass that lands on annotated silence/noise.", ""]
    grid_cost = grid_cost_line(grouped, spec)
    if grid_cost:
        lines += [grid_cost, ""]
    for bench in spec.benchmarks:
        systems = grouped.get(bench, {})
        done = sum(len(v) for name, v in systems.items() if name in spec.systems)
        total = len(spec.systems) * len(spec.seeds)
        lines += [f"## Benchmark `{bench}` ({done}/{total} runs finished)", ""]
        if not systems:
            lines += ["No finished run yet.", ""]
            continue
        lines += benchmark_table(systems, order) + [""]
        lines += alignment_note(systems)
        cost = cost_line(systems, order, total, spec.jobs)
        if cost:
            lines += [cost, ""]
        paired = paired_table(systems, order + list(spec.attempts))
        if paired:
            lines += ["CER change against plain CTC of the same seed (same initialisation and batch order), "
                      "in CER points, mean ± std over the paired seeds; negative is better. In brackets: the seeds on "
                      "which the system's CER is lower, and the two-sided p of a paired t-test (not corrected for "
                      "the number of rows). A seed marked * paired runs of two kernel builds, which one seed does not "
                      "make alike (docs/results_v1.md, on reproducibility):", ""] + paired + [""]
        # the paper's second claim: uot beats balanced ot
        paired_ot = paired_table(systems, uot_systems(systems, order), baseline="ot")
        if paired_ot:
            lines += ["The same, against balanced `ot` of the same seed (the paper's claim that UOT beats OT):", ""]
            lines += paired_ot + [""]
        targets = target_table(systems, order)
        if targets:
            lines += ["The issue's targets, read off the grid (the uot grid system with the lowest mean CER on each "
                      "test set, i.e. uot 'at its best rho'). It beats ot beyond the spread when it is ahead of ot "
                      "of the same seed by more than the std of that change over the seeds:", ""]
            lines += targets + [""]
        attempts = [name for name in spec.attempts if name in systems]
        if attempts:
            lines += [f"Attempts on `{bench}` (not part of the grid; settings in `{spec.source}`, "
                      "'rel. CER vs ctc' against the same ctc mean):", ""]
            lines += benchmark_table(systems, ["ctc"] + attempts) + [""]
        unknown = sorted(set(systems) - set(spec.systems) - set(spec.attempts))
        if unknown:
            lines += [f"Results under `{results_dir / bench}` for names this config does not define (not shown): "
                      + ", ".join(f"`{name}`" for name in unknown), ""]
        # one image folder per report (img/results/ for results.md), so two grids never share a plot
        png = out_md.parent / "img" / out_md.stem / f"{bench}_rho.png"
        if plot_rho(systems, png, f"{bench}: CER and alignment against rho"):
            lines += [f"![CER and precision/recall against rho]({png.relative_to(out_md.parent).as_posix()})", ""]
    if discussion.exists():
        lines += [discussion.read_text()]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    print(f"[report] wrote {out_md}")
