# Both targets set the machine up themselves (Debian packages, venv, pip) and are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench clean

setup:
	@VENV=$(VENV) ./scripts/setup.sh

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) -m otalign.cli demo

bench: setup
	$(PY) -m otalign.cli bench solver

clean:
	rm -rf exp/demo
