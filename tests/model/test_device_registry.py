"""Device/dtype choice (models/device.py) and models by name (models/registry.py)."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from promptus_codec.errors import ModelError, PrxError  # noqa: E402
from promptus_codec.models import device as dev  # noqa: E402
from promptus_codec.models.registry import MODEL_NAMES, load_model  # noqa: E402


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_on_cpu(no_cuda):
    assert dev.resolve() == (torch.device("cpu"), torch.float32)


def test_auto_on_cuda(fake_cuda):
    assert dev.resolve() == (torch.device("cuda"), torch.float16)
    assert dev.resolve("cpu") == (torch.device("cpu"), torch.float32)  # dtype follows the device


@pytest.mark.parametrize(
    "name, dtype",
    [("fp32", torch.float32), ("float16", torch.float16), ("fp16", torch.float16), ("bf16", torch.bfloat16)],
)
def test_explicit_dtype(no_cuda, name, dtype):
    assert dev.resolve("cpu", name) == (torch.device("cpu"), dtype)


def test_resolve_is_idempotent(no_cuda):
    once = dev.resolve("auto", "bf16")
    assert dev.resolve(*once) == once


def test_cuda_missing(no_cuda):
    with pytest.raises(ModelError, match="no CUDA"):
        dev.resolve("cuda")


@pytest.mark.parametrize(
    "device, dtype", [("tpu", "auto"), ("cpu", "fp8"), ("cpu", torch.int8), ("nonsense:0", "auto")]
)
def test_bad_choices(no_cuda, device, dtype):
    with pytest.raises(ModelError):
        dev.resolve(device, dtype)


def test_apply_layout():
    conv = torch.nn.Conv2d(4, 8, 3)
    assert dev.apply_layout(conv, False).weight.is_contiguous()
    assert dev.apply_layout(conv, True).weight.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------


def test_load_tiny_by_name(no_cuda):
    pytest.importorskip("diffusers")
    model = load_model("tiny")
    assert model.spec.name == "tiny" and model.device == torch.device("cpu") and model.dtype == torch.float32
    for method in ("encode_image", "denoise", "decode_latent", "identity"):
        assert callable(getattr(model, method))


def test_unknown_name():
    with pytest.raises(ModelError) as info:
        load_model("sd-xl")
    message = str(info.value)
    assert isinstance(info.value, PrxError) and "\n" not in message
    assert all(name in message for name in MODEL_NAMES)


def test_sd_turbo_gets_resolved_arguments(no_cuda, monkeypatch):
    pytest.importorskip("diffusers")
    from promptus_codec.models import sd_turbo

    calls = []
    monkeypatch.setattr(sd_turbo, "load_sd_turbo", lambda **kw: calls.append(kw) or "model")
    assert load_model("sd-turbo", dtype="bf16", source="somewhere") == "model"
    assert calls == [{"device": torch.device("cpu"), "dtype": torch.bfloat16, "source": "somewhere"}]


def test_registry_import_is_light():
    code = "import sys, promptus_codec.models.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
