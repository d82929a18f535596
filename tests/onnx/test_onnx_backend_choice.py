"""--backend auto: the choice from a table of facts, and probing only what the choice needs."""

from __future__ import annotations

import pytest

from promptus_codec.decoder.runtimes import FACT_FAILED, AUTO_ORDER, LazyFacts, choose_backend, runtime_label
from promptus_codec.errors import MissingDependencyError

EVERYTHING = {fact: True for fact in FACT_FAILED}
CPU_ONLY = {**EVERYTHING, "gpu": False}


@pytest.mark.parametrize(
    "facts, device, expected",
    [
        (EVERYTHING, "auto", ("tensorrt", "cuda")),
        ({**EVERYTHING, "tensorrt": False}, "auto", ("onnx", "cuda")),
        ({**EVERYTHING, "tensorrt": False, "onnx-graph": False}, "auto", ("torch", "cuda")),
        ({**EVERYTHING, "tensorrt": False, "onnxruntime-cuda": False}, "auto", ("torch", "cuda")),
        ({**EVERYTHING, "tensorrt": False, "onnxruntime-cuda": False, "torch-cuda": False}, "auto", ("onnx", "cpu")),
        (CPU_ONLY, "auto", ("onnx", "cpu")),
        ({**CPU_ONLY, "onnx-graph": False}, "auto", ("torch", "cpu")),
        ({**CPU_ONLY, "onnxruntime": False}, "auto", ("torch", "cpu")),
        ({**CPU_ONLY, "torch": False}, "auto", ("onnx", "cpu")),
        (EVERYTHING, "cpu", ("onnx", "cpu")),  # --device cpu skips the GPU choices
        ({**EVERYTHING, "onnx-graph": False}, "cuda", ("torch", "cuda")),
    ],
)
def test_choice(facts, device, expected):
    assert choose_backend(facts, device)[:2] == expected


def test_reason_groups_the_passed_choices():
    _, _, why = choose_backend({**CPU_ONLY, "onnx-graph": False})
    assert why == "tensorrt, onnx-cuda, torch-cuda: no NVIDIA driver; onnx-cpu: no exported graph for this stream"
    assert choose_backend(EVERYTHING)[2] == ""


def test_nothing_available():
    facts = {**CPU_ONLY, "torch": False, "onnxruntime": False}
    with pytest.raises(MissingDependencyError, match="torch-cpu: torch or diffusers not installed"):
        choose_backend(facts)
    with pytest.raises(MissingDependencyError):
        choose_backend({**EVERYTHING, "gpu": False}, "cuda")


def test_probes_run_lazily_and_once():
    called = []

    def probe(name, value):
        def run():
            called.append(name)
            return value

        return run

    values = {**CPU_ONLY}
    facts = LazyFacts({name: probe(name, value) for name, value in values.items()})
    assert choose_backend(facts)[:2] == ("onnx", "cpu")
    assert "torch" not in called and "torch-cuda" not in called  # torch is never imported for onnx-cpu
    assert called.count("gpu") == 1


def test_every_choice_has_a_label_and_known_facts():
    assert [runtime_label(b, d) for b, d, _ in AUTO_ORDER] == [
        "tensorrt",
        "onnx-cuda",
        "torch-cuda",
        "onnx-cpu",
        "torch-cpu",
    ]
    assert {fact for *_, needs in AUTO_ORDER for fact in needs} == set(FACT_FAILED)
