# The README's two commands live here:
#   make demo   set up a fresh machine and run the main job
#   make test   set up a fresh machine and run the whole test suite
# CI (.ci/run) calls `make test` and nothing else.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# LPIPS needs torchvision, and the only torchvision this project's machines keep on local
# disk is 0.29.1 with torch 2.14.1 (a CUDA build that runs on the CPU; about 45 s to install,
# 5.6 GB). Installing the pair first stops the extras' open `torch` requirement from
# pulling anything else.
TORCH  := torch==2.14.1 torchvision==0.29.1

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
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --runslow

clean:
	rm -rf $(VENV) out .pytest_cache
