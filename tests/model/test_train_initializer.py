"""scripts/train_initializer.py: a prompt encoder trained for a frozen generator, written with its fingerprint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from train_initializer import InitializerConfig, save, train  # noqa: E402

from promptus_codec.models.fingerprint import fingerprint_state_dict  # noqa: E402
from promptus_codec.models.mini import MiniConfig, PromptEncoder  # noqa: E402


def fixed_sampler(size: int, batch: int = 2):
    """One smooth batch, always the same: (f_k, f_s, f_K, s, K), so the loss must fall on it."""
    g = torch.Generator().manual_seed(4)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    frames = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    steps, intervals = torch.tensor([1] * batch), torch.tensor([2] * batch)
    return lambda _g: (frames, frames, frames, steps, intervals)


def encoder_for(spec) -> PromptEncoder:
    torch.manual_seed(0)
    shape = dict(tokens=spec.prompt_tokens, prompt_dim=spec.prompt_dim)
    return PromptEncoder(**MiniConfig().prompt_encoder_kwargs() | shape)


def test_trains_on_mini_and_writes_a_loadable_fingerprinted_encoder(tmp_path):
    from promptus_codec.models.registry import load_model

    model = load_model("mini", device="cpu", dtype="fp32")
    generator_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    encoder = encoder_for(model.spec)
    cfg = InitializerConfig(size=64, batch=2, steps=12, lr=1e-3, min_rank=8)
    curve = train(model, encoder, cfg, fixed_sampler(64), log=None)
    assert len(curve) == 12 and curve[-1]["mse"] < curve[0]["mse"]  # one fixed batch: it must fit it better
    assert all(torch.equal(generator_before[k], v) for k, v in model.unet.state_dict().items())  # frozen
    record = save(encoder, model, cfg, curve, 1.0, tmp_path / "init.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "init.safetensors"))
    assert fingerprint_state_dict(state).hex() == record["fingerprint"]
    assert json.loads((tmp_path / "init.safetensors.json").read_text())["generator"]["name"] == "mini"
    again = encoder_for(model.spec)
    again.load_state_dict({k: v.float() for k, v in state.items()})
    u, v = again(torch.rand(1, 3, 64, 64))
    assert u.shape == (1, 77, 16) and v.shape == (1, 16, 1024)


@pytest.mark.slow
def test_runs_on_the_sd_turbo_architecture_with_random_weights():
    """A few steps at 64 x 64 through SD-Turbo's real UNet, VAE and TAESD shapes (random weights, no files)."""
    from promptus_codec.container.records import ModelIdentity
    from promptus_codec.models.sd_turbo import TAESD, UNET, VAE, SDTurbo, build_component

    torch.manual_seed(0)
    parts = [build_component(c, "cpu").eval().requires_grad_(False) for c in (UNET, VAE, TAESD)]
    identity = ModelIdentity("sd-turbo", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    model = SDTurbo(parts[0], parts[1], parts[2], identity, {}, torch.device("cpu"), torch.float32)
    encoder = encoder_for(model.spec)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    curve = train(model, encoder, InitializerConfig(size=64, batch=1, steps=2), fixed_sampler(64, batch=1), log=None)
    assert len(curve) == 2 and all(torch.isfinite(torch.tensor(r["mse"])) for r in curve)
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
