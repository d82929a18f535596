"""The built-in mini model: shipped files, fingerprints, provenance, and that it reconstructs."""

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from promptus_codec.models import fingerprint  # noqa: E402
from promptus_codec.models.mini import (
    CONFIG_FILE,
    INITIALIZER_FILE,
    PROMPT_ENCODER_KEY,
    PROVENANCE_FILE,
    WEIGHTS_FILE,
    MiniConfig,
    PromptEncoder,
    generator_record,
    load_joint_prompt_encoder,
    load_prompt_encoder,
)  # noqa: E402
from promptus_codec.models.registry import load_initializer, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "scripts" / "train_builtin.py"


def _train_module():
    spec = importlib.util.spec_from_file_location("train_builtin", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_builtin", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_weights_are_float16_and_at_most_20_mb():
    assert WEIGHTS_FILE.stat().st_size <= 20_000_000
    tensors = fingerprint.read_safetensors(WEIGHTS_FILE)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert {name.split(".")[0] for name in tensors} == {"unet", "taesd", "vae", PROMPT_ENCODER_KEY}


def test_fingerprints_equal_the_recorded_values(fingerprint_cache):
    recorded = json.loads(CONFIG_FILE.read_text())["sha256"]
    identity = load_model("mini", device="cpu").identity()
    assert identity.name == "mini"
    assert identity.denoiser_sha256.hex() == recorded["denoiser"]
    assert identity.decoder_sha256.hex() == recorded["decoder"]
    assert identity.encoder_sha256.hex() == recorded["encoder"]
    _, digest = load_initializer("mini", identity)
    assert digest.hex() == json.loads(Path(f"{INITIALIZER_FILE}.json").read_text())["fingerprint"]
    joint, digest = load_joint_prompt_encoder()  # benchmarks only, but its figures are in the README
    assert digest.hex() == recorded[PROMPT_ENCODER_KEY] and joint.unit_factors is False
    tiny = load_model("tiny", device="cpu").identity()
    assert tiny.denoiser_sha256 != identity.denoiser_sha256  # two models, two identities


def test_provenance_agrees_with_the_shipped_files():
    provenance = json.loads(PROVENANCE_FILE.read_text())
    assert provenance["weights_sha256"] == hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()
    assert provenance["steps"] == len(provenance["loss_curve"]) > 0
    assert [row["step"] for row in provenance["loss_curve"]] == list(range(1, provenance["steps"] + 1))
    assert provenance["data_sha256"] == json.loads((ROOT / "scripts" / "data_sha256.json").read_text())
    train = _train_module()
    assert provenance["train_config"] == asdict(train.TrainConfig())
    configs = json.loads(CONFIG_FILE.read_text())
    assert configs["mini_config"] == json.loads(json.dumps(asdict(train.MiniConfig())))
    tail = provenance["loss_curve"][-100:]
    # The curve keeps each loss rounded to 6 decimals (train_builtin._json_number), the final
    # losses are means of the unrounded ones: a mean of errors of at most 0.5e-6 each, plus
    # float64 summation of 100 terms (~1e-17 here).
    logged = 0.5e-6 + 1e-15
    assert provenance["final_losses"]["ae_mse"] == pytest.approx(sum(r["ae_mse"] for r in tail) / len(tail), abs=logged)
    generation = [r["gen_mse"] for r in tail if r["gen_mse"] is not None]  # None: a phase-1 step
    assert provenance["final_losses"]["gen_mse"] == (
        pytest.approx(sum(generation) / len(generation), abs=logged) if generation else None
    )


def test_shipped_initializer_was_trained_for_the_shipped_generator():
    """mini-initializer.safetensors: float16, its fingerprint and mini's identity in its record, the
    settings scripts/train_initializer.py ran with, and a loss curve as long as its steps."""
    spec = importlib.util.spec_from_file_location("train_initializer", ROOT / "scripts" / "train_initializer.py")
    script = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))  # it imports train_builtin beside it
    sys.modules.setdefault("train_initializer", script)
    spec.loader.exec_module(script)
    record = json.loads(Path(f"{INITIALIZER_FILE}.json").read_text())
    tensors = fingerprint.read_safetensors(INITIALIZER_FILE)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert fingerprint.fingerprint_state_dict(tensors).hex() == record["fingerprint"]
    assert record["generator"] == generator_record(load_model("mini", device="cpu").identity())
    assert record["prompt_encoder"] == MiniConfig().prompt_encoder_kwargs() | {"unit_factors": True}
    config = script.InitializerConfig(**record["config"])
    assert config.steps == record["steps"] == len(record["loss_curve"]) > 0
    assert config == script.InitializerConfig(steps=config.steps, threads=config.threads)  # the script's defaults


def test_unit_factors_are_at_rms_one_whatever_the_weights():
    """Every column of U and row of V at RMS 1, where the same weights without it give factors about
    20x smaller (a fresh encoder's). With raw RMS r the result is r / sqrt(r^2 + 1e-8) (the guard
    against 0): for r >= 0.01 that is 1 within 5e-5, beside float32's ~1e-6 from a mean of 77 or
    1024 squares and an rsqrt."""
    torch.manual_seed(3)
    images = torch.rand(2, 3, 64, 64)
    encoder = PromptEncoder(**MiniConfig().prompt_encoder_kwargs(), unit_factors=True)
    assert encoder.kwargs()["unit_factors"] is True
    with torch.no_grad():
        u, v = encoder(images)  # (2, 77, 16), (2, 16, 1024)
        encoder.unit_factors = False
        raw_u, raw_v = encoder(images)
    for raw in (raw_u.square().mean(1).sqrt(), raw_v.square().mean(2).sqrt()):  # (2, 16) each
        assert 0.01 <= raw.min() and raw.max() < 0.1
    for unit in (u.square().mean(1).sqrt(), v.square().mean(2).sqrt()):
        assert torch.allclose(unit, torch.ones_like(unit), atol=5e-5, rtol=0)
    assert torch.allclose(u * raw_u.square().mean(1, keepdim=True).sqrt(), raw_u, rtol=1e-4)  # only rescaled


def test_data_md_lists_every_source_digest():
    text = (ROOT / "scripts" / "DATA.md").read_text()
    for path, digest in json.loads((ROOT / "scripts" / "data_sha256.json").read_text()).items():
        assert digest in text and path.split("/", 1)[1] in text


def test_initializer_is_refused_for_models_without_one():
    from promptus_codec.errors import ModelError

    tiny = load_model("tiny", device="cpu")
    with pytest.raises(ModelError, match="mini"):
        load_initializer("tiny", tiny.identity())
    with pytest.raises(ModelError, match="trained for the generator 'mini'"):  # mini's, for tiny's weights
        load_prompt_encoder(tiny.identity())


def _smooth_frame(size: int = 128) -> torch.Tensor:
    """A smooth, sky-like test picture no training sample saw: (1, 3, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = 0.45 + 0.25 * torch.sin(3 * xx + 1) * torch.cos(2 * yy)
    g = 0.55 + 0.2 * torch.cos(4 * yy - 2 * xx)
    b = 0.75 + 0.15 * torch.sin(2 * xx + 3 * yy)
    return torch.stack([r, g, b])[None].clamp(0, 1)


def test_mini_autoencoder_reconstructs_and_its_prompt_path_runs():
    """The scene-latent path (VAE encoder -> TAESD decoder) beats the best flat frame;
    the prompt encoder's 8-bit rank-8 factors drive one generation step of the right shape.

    The generation step itself is not yet held to a quality bar: the shipped checkpoint's UNet
    is undertrained (README, "The mini model").
    """
    from promptus_codec.generate import GenerationStep, initial_noise_tensor
    from promptus_codec.prompt import compose, dequantize, quant_params, quantize

    model = load_model("mini", device="cpu", dtype="fp32")
    encoder, _ = load_prompt_encoder(model.identity())
    frame = _smooth_frame()
    with torch.no_grad():
        z_prev = model.encode_image(frame)  # (1, 4, 16, 16): a scene latent
        autoencoded = model.decode_latent(z_prev)  # (1, 3, 128, 128)
        u, v = encoder(frame)
        stored = []
        for x in (u[0, :, :8].numpy(), v[0, :8].numpy()):
            scale, zp = quant_params(x.min(), x.max())
            stored.append(dequantize(quantize(x, scale, zp), scale, zp))
        prompt = torch.from_numpy(compose(*stored))[None]  # (1, 77, 1024)
        generator = GenerationStep(model)
        latents, image = generator(z_prev, initial_noise_tensor(generator.constants, tuple(z_prev.shape[1:])), prompt)
    flat = torch.mean((frame.mean((2, 3), keepdim=True) - frame) ** 2).item()  # best flat colour per channel
    mse = torch.mean((autoencoded - frame) ** 2).item()
    # Measured on the shipped checkpoint: 22.4 dB, 3.4 dB above the best flat frame. The bars sit
    # 1-2 dB lower; float differences between CPUs move this by far less than 0.01 dB.
    assert 10 * math.log10(1 / mse) > 20.0
    assert 10 * math.log10(flat / mse) > 2.0
    assert latents.shape == (1, 4, 16, 16) and image.shape == (1, 3, 128, 128)
    assert torch.isfinite(latents).all() and 0 <= image.min() and image.max() <= 1


@pytest.mark.slow
def test_training_from_scratch_repeats_the_committed_curve(tmp_path):
    """`train_builtin.py --steps 3` from scratch gives the committed curve's first 3 steps.

    Same seed, data and torch build: the draws are identical, so only float summation order
    (threads, CPU kernels) differs; after 3 Adam steps that moves a loss by far less than 2 %.
    """
    pytest.importorskip("skimage", reason="needs the training extra: pip install -e '.[train]'")
    done = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--steps", "3", "--work", str(tmp_path), "--no-export"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours = torch.load(tmp_path / "last.pt", weights_only=True)["log"]
    committed = json.loads(PROVENANCE_FILE.read_text())["loss_curve"][:3]
    for mine, theirs in zip(ours, committed):
        assert mine["rank"] == theirs["rank"]
        for key in ("gen_mse", "ae_mse", "latent_mse"):
            if theirs[key] is None:  # phase 1 trains the autoencoder alone
                assert math.isnan(mine[key])
            else:
                # not a rounding bound: Adam's first steps move each weight by about lr whatever
                # its gradient's size, so a gradient within rounding of 0 can flip a step's sign;
                # 2% is the allowance for that, the curve's own logging rounds to 6 decimals
                assert mine[key] == pytest.approx(theirs[key], rel=0.02)
