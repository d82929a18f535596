"""Fixtures for the model tier: the built-in tiny model on CPU, loaded once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    pytest.importorskip("diffusers")
    from promptus_codec.models.tiny import load_tiny

    return load_tiny(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_generator(tiny_model):
    from promptus_codec.generate import Generator

    return Generator(tiny_model).eval()


@pytest.fixture
def fingerprint_cache(tmp_path, monkeypatch):
    """A private, empty fingerprint cache folder for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROMPTUS_CACHE", str(cache))
    return cache
