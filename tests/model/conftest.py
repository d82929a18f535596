"""Fixtures for the model tier: the built-in tiny model on CPU, loaded once per session."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_fingerprint_cache(tmp_path_factory):
    """Keep weight fingerprints cached in a temp folder, never in the user's home."""
    saved = os.environ.get("PROMPTUS_CACHE")
    os.environ["PROMPTUS_CACHE"] = str(tmp_path_factory.mktemp("promptus-cache"))
    yield
    if saved is None:
        os.environ.pop("PROMPTUS_CACHE", None)
    else:
        os.environ["PROMPTUS_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_model():
    pytest.importorskip("diffusers")
    from promptus_codec.models.tiny import load_tiny

    return load_tiny(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_generator(tiny_model):
    from promptus_codec.generate import GenerationStep

    return GenerationStep(tiny_model).eval()


@pytest.fixture
def fingerprint_cache(tmp_path, monkeypatch):
    """A private, empty fingerprint cache folder for one test (a fresh one, unlike the session's)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROMPTUS_CACHE", str(cache))
    return cache
