"""The built-in tiny model: committed weights, fingerprints, interface shapes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from promptus_codec.errors import WeightsNotFoundError  # noqa: E402
from promptus_codec.models import fingerprint  # noqa: E402
from promptus_codec.models.tiny import CONFIG_FILE, PARTS, WEIGHTS_FILE, load_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _expected_digests() -> tuple[bytes, bytes, bytes]:
    recorded = json.loads(CONFIG_FILE.read_text())["sha256"]
    return tuple(bytes.fromhex(recorded[k]) for k in ("denoiser", "decoder", "encoder"))


def test_weights_file_is_small_float16():
    assert WEIGHTS_FILE.stat().st_size < 3_000_000
    tensors = fingerprint.read_safetensors(WEIGHTS_FILE)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert {name.split(".")[0] for name in tensors} == {p.key for p in PARTS}


def test_fingerprint_equals_the_recorded_value(fingerprint_cache):
    identity = load_tiny(device="cpu").identity()
    assert identity.name == "tiny"
    assert (identity.denoiser_sha256, identity.decoder_sha256, identity.encoder_sha256) == _expected_digests()
    # ...and equals an uncached hash of the file's tensors.
    tensors = fingerprint.read_safetensors(WEIGHTS_FILE)
    unet = fingerprint.select(tensors, ("",), strip="unet.")
    assert fingerprint.fingerprint_state_dict(unet) == identity.denoiser_sha256


def test_second_load_uses_the_cache(fingerprint_cache, monkeypatch):
    first = load_tiny(device="cpu").identity()
    cache = json.loads((fingerprint_cache / "fingerprints.json").read_text())
    assert len(cache) == 3 and all(str(WEIGHTS_FILE.resolve()) in key for key in cache)

    def no_hashing(_):
        raise AssertionError("rehashed despite the cache")

    monkeypatch.setattr(fingerprint, "fingerprint_state_dict", no_hashing)
    assert load_tiny(device="cpu").identity() == first


def test_fingerprint_is_independent_of_the_run_dtype(fingerprint_cache):
    fp32 = load_tiny(device="cpu", dtype="fp32")
    bf16 = load_tiny(device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert bf16.identity() == fp32.identity() == load_tiny(device="cpu").identity()


def test_model_built_in_memory_fingerprints_its_state(tiny_model):
    from promptus_codec.models.tiny import TinyModel

    copy = TinyModel(tiny_model.unet, tiny_model.taesd, tiny_model.vae)  # no file: hashes float32 state
    assert copy.identity().name == "tiny"
    assert copy.identity() != tiny_model.identity()  # float32 bytes, not the file's float16


@pytest.mark.parametrize("height, width", [(64, 64), (128, 192)])
def test_encode_image_shape(tiny_model, height, width):
    pixels = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latent = tiny_model.encode_image(pixels)
    assert latent.shape == (2, 4, height // 8, width // 8)
    assert 0.3 < latent.std() < 3  # roughly SD-latent scale


def test_decode_latent_shape_and_range(tiny_model):
    latent = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels = tiny_model.decode_latent(latent)
    assert pixels.shape == (2, 3, 64, 128)
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0.05


def test_denoise_shape(tiny_model):
    out = tiny_model.denoise(torch.randn(3, 4, 8, 24), torch.randn(3, 77, 1024), 999)
    assert out.shape == (3, 4, 8, 24)


def test_missing_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="tiny"):
        load_tiny(tmp_path / "nowhere.safetensors", device="cpu")


@pytest.mark.slow
def test_script_rebuilds_the_committed_file():
    """Bit-identical only with the torch/CPU that wrote it; hence opt-in."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_weights.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
