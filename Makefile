# The README's two commands live here:
#   make demo   set up a fresh machine and run the main job
#   make test   set up a fresh machine and run the whole test suite
# CI (.ci/run) calls `make test` and nothing else.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch==2.13.0 is the CPU wheel this project's machines keep on local disk; installing it
# first stops the open `torch` requirement of the extras from pulling a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: setup demo test test-slow clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --runslow

clean:
	rm -rf $(VENV) out .pytest_cache
