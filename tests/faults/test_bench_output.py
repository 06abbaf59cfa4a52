"""`make bench` must not rewrite docs/benchmarks.md in the user's checkout (issue 18, item 8): it
writes to build/results/ unless UPDATE_DOCS=1 asks for the docs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_recipe(*make_args):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-s", "bench", *make_args], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return next(line for line in out.splitlines() if "bench.solver" in line)


def test_make_bench_writes_under_build_results_not_the_docs():
    line = _bench_recipe()
    assert '"build/results/benchmarks.md"' in line and "docs/benchmarks.md" not in line
    assert '"docs/benchmarks.md"' in _bench_recipe("UPDATE_DOCS=1")
    assert '"elsewhere/b.md"' in _bench_recipe("BENCH_OUT=elsewhere/b.md")


def test_the_recipe_sends_the_solver_section_where_it_says(tmp_path, monkeypatch):
    """The recipe sets bench.solver.DOC; the section is written there and the docs stay as they are."""
    monkeypatch.syspath_prepend(str(REPO))
    import bench.solver as solver

    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    monkeypatch.setattr(solver, "DOC", tmp_path / "build" / "results" / "benchmarks.md")
    solver.write_section("| row |", "python -m bench.solver")
    assert "## Solver" in solver.DOC.read_text() and "| row |" in solver.DOC.read_text()
    assert (docs.read_bytes() if docs.exists() else None) == before
