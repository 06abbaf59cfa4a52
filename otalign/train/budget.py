"""The grid's time bookkeeping for the results page: what the runs cost, against ``budget_hours``.

Read from the run results' ``wall_s``, ``x_real_time`` and ``started_at``/``finished_at`` only.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otalign.train.experiment import ExperimentConfig


def cost_line(systems: dict[str, list[dict[str, Any]]], grid: list[str], total_runs: int, jobs: int = 1) -> str:
    """Wall-clock of the finished grid runs and what the whole grid would take at their median."""
    walls = sorted(r["wall_s"] / 60 for name in grid for r in systems.get(name, []) if r.get("wall_s"))
    if not walls:
        return ""
    median = statistics.median(walls)
    line = (f"Wall-clock per grid run (training, decoding and alignment scoring): median {median:.1f} min, "
            f"range {walls[0]:.1f}-{walls[-1]:.1f} min over {len(walls)} runs. At the median, all {total_runs} "
            f"runs of this benchmark take {median * total_runs / 60:.1f} h one after another")
    if jobs > 1:
        line += f", {median * total_runs / 60 / jobs:.1f} h {jobs} at a time"
    return line + "."


def busy_hours(runs: list[dict[str, Any]]) -> float | None:
    """Hours in which at least one of ``runs`` was going: the union of their start-finish spans.

    This is the grid's wall-clock with the pauses between sittings left out, idle tails included
    (a lone last run counts in full). None when a run lacks ``started_at``/``finished_at``.
    """
    if not runs or any(not (r.get("started_at") and r.get("finished_at")) for r in runs):
        return None
    spans = sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in runs)
    seconds, (start, end) = 0.0, spans[0]
    for next_start, next_end in spans[1:]:
        if next_start > end:
            seconds += (end - start).total_seconds()
            start, end = next_start, next_end
        else:
            end = max(end, next_end)
    return (seconds + (end - start).total_seconds()) / 3600


def grid_cost_line(grouped: dict[str, dict[str, list[dict[str, Any]]]], spec: ExperimentConfig) -> str:
    """The grid's measured run time, summed over every benchmark, against ``budget_hours`` if given.

    ``jobs`` runs share the machine, so the grid's wall-clock is at least the summed run time over
    ``jobs``; a sum, not a median, so that slow runs count. When every run has start and finish
    times, the budget is checked on the time in which a grid run was going (``busy_hours``) instead.
    """
    timed = [r for bench in spec.benchmarks for name in spec.systems
             for r in grouped.get(bench, {}).get(name, []) if r.get("wall_s")]
    walls = [r["wall_s"] for r in timed]
    if not walls:
        return ""
    total = len(spec.systems) * len(spec.seeds) * len(spec.benchmarks)
    jobs = spec.jobs
    hours = sum(walls) / 3600
    how = "one after another" if jobs == 1 else f"{jobs} at a time"
    line = f"Cost of the grid: {len(walls)}/{total} runs finished, {hours:.1f} h of measured run time"
    line += "." if jobs == 1 else f", {hours / jobs:.1f} h {how}."
    busy = busy_hours(timed)
    if busy is not None:
        line += (f" Wall-clock with a grid run going, from the runs' start and finish times: {busy:.1f} h "
                 "(pauses between sittings left out).")
    # the pace says how much of the cost is the machine's load rather than the settings
    paces = sorted(r["x_real_time"] for r in timed if r.get("x_real_time"))
    if paces:
        line += (f" Training ran at {paces[0]:.0f}-{paces[-1]:.0f}x real time per process "
                 f"(median {statistics.median(paces):.0f}x).")
    budget = spec.budget_hours
    if budget:
        measured = busy if busy is not None else hours / jobs
        verdict = ("within it" if measured <= budget
                   else f"**over it by {100 * (measured / budget - 1):.0f}%**")
        scope = "" if len(walls) == total else " for the finished runs alone"
        basis = "wall-clock" if busy is not None else f"run time over {jobs}" if jobs > 1 else "run time"
        line += f" The budget is {budget:g} h, runs {how}: {verdict} ({basis}){scope}."
    return line
