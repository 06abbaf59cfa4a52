# Both targets set the machine up themselves (Debian packages, venv, pip) and are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
# threads: the cores that are free now (cores minus the 1-minute load average, at least 1); on a
# shared 2-core machine a second thread on a busy core made training 2-11x slower
export OMP_NUM_THREADS ?= $(shell python3 -c "import os; n = os.cpu_count() or 1; print(max(1, min(n, round(n - os.getloadavg()[0]))))")
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench clean

setup:
	@VENV=$(VENV) ./scripts/setup.sh

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) -m otalign.cli demo

# make bench writes the solver section to $(BENCH_OUT), never into the checkout's docs;
# make bench UPDATE_DOCS=1 updates docs/benchmarks.md (what a maintainer commits).
BENCH_OUT ?= build/results/benchmarks.md
BENCH_ARGS ?=
ifeq ($(UPDATE_DOCS),1)
BENCH_DOC := docs/benchmarks.md
else
BENCH_DOC := $(BENCH_OUT)
endif

bench: setup
	$(PY) -c "import sys; from pathlib import Path; import bench.solver as b; b.DOC = Path(sys.argv[1]); b.main(sys.argv[2:])" "$(BENCH_DOC)" $(BENCH_ARGS)

clean:
	rm -rf exp/demo
