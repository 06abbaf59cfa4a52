"""`make bench` must not rewrite docs/benchmarks.md in the user's checkout (issue 18, item 8): it
writes to build/results/ unless UPDATE_DOCS=1 asks for the docs."""

import shutil
import subprocess
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


def test_the_recipe_sends_the_solver_section_where_it_says(monkeypatch):
    """The recipe sets bench.solver.DOC before main(): the section must be written to DOC, read at
    write time (not a path fixed elsewhere), or make bench would still touch the docs."""
    import inspect

    monkeypatch.syspath_prepend(str(REPO))
    import bench.solver as solver

    assert solver.DOC == REPO / "docs" / "benchmarks.md"  # what UPDATE_DOCS=1 writes
    source = inspect.getsource(solver.write_section)
    assert "DOC.write_text" in source and "docs/benchmarks.md\")" not in source
