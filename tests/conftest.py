"""Test tiers: fast by default; `--runslow` adds tests marked slow (SD-Turbo-size models)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may hang on network retries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        for item in items:
            if "slow" in item.keywords:  # SD-Turbo-size fits at ~17 s an iteration: pyproject's 900 s is too short
                item.add_marker(pytest.mark.timeout(3600))
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
