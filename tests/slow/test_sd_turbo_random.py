"""The real SD-Turbo architecture with random weights, saved the way Stability ships it.

Builds the UNet and VAE from the shipped configs, writes them as one single-file checkpoint in
the original (ldm) layout plus a TAESD in a fake Hugging Face cache, loads them back through
``load_sd_turbo`` with no network, and generates one small frame. About 3.5 GB of fp32
weights are written and read back.
"""

from __future__ import annotations

import json
import math
import shutil
import socket

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from safetensors.torch import save_file  # noqa: E402

from promptus_codec.container.records import GenerationConstants  # noqa: E402
from promptus_codec.models import fingerprint  # noqa: E402
from promptus_codec.models.sd_turbo import TAESD, TAESD_REVISION, UNET, VAE, build_component, load_sd_turbo  # noqa: E402

pytestmark = pytest.mark.slow


# --- diffusers names -> original Stability names (the inverse of diffusers' single-file conversion)


def _unet_prefixes() -> list[tuple[str, str]]:
    """(diffusers prefix, ldm prefix) for the SD 2.x UNet: 4 levels, 2 resnets down, 3 up."""
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(4):
        for j in range(2):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{3 * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{3 * i + j + 1}.1."))
        for j in range(3):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{3 * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{3 * i + j}.1."))
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{3 * i + 3}.0.op."))
        # level 0 has no attention, so its upsampler is the block's second module, not its third
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{3 * i + 2}.{2 if i else 1}."))
    return pairs


_UNET_RESNET = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _vae_prefixes() -> list[tuple[str, str]]:
    """(diffusers prefix, ldm prefix) for the SD VAE; the decoder's levels are numbered backwards."""
    pairs = []
    for coder in ("encoder", "decoder"):
        pairs += [
            (f"{coder}.conv_norm_out.", f"{coder}.norm_out."),
            (f"{coder}.mid_block.attentions.0.", f"{coder}.mid.attn_1."),
        ]
        pairs += [(f"{coder}.mid_block.resnets.{j}.", f"{coder}.mid.block_{j + 1}.") for j in range(2)]
    for i in range(4):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(2)]
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{3 - i}.block.{j}.") for j in range(3)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{3 - i}.upsample."))
    return pairs


_VAE_RESNET = [("conv_shortcut.", "nin_shortcut.")]
_VAE_ATTENTION = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def _to_ldm(state: dict, prefixes, inner: dict[str, list[tuple[str, str]]]) -> dict:
    """Rename every key by its longest matching prefix, then its inner part (resnet, attention)."""
    out = {}
    for name, tensor in state.items():
        matches = [(hf, ldm) for hf, ldm in prefixes if name.startswith(hf)]
        hf, ldm = max(matches, key=lambda pair: len(pair[0])) if matches else ("", "")
        rest = name[len(hf) :]
        for kind, parts in inner.items():
            if kind in hf:
                for old, new in parts:
                    rest = new + rest[len(old) :] if rest.startswith(old) else rest
        out[ldm + rest] = tensor
    return out


def unet_to_ldm(state: dict) -> dict:
    """A diffusers UNet state dict under the names of the original SD 2.x checkpoint."""
    return {
        f"model.diffusion_model.{k}": v for k, v in _to_ldm(state, _unet_prefixes(), {"resnets": _UNET_RESNET}).items()
    }


def vae_to_ldm(state: dict) -> dict:
    """A diffusers VAE state dict under the original names; attention projections as 1x1 convs."""
    renamed = _to_ldm(state, _vae_prefixes(), {"resnets": _VAE_RESNET, "attentions": _VAE_ATTENTION})
    return {
        f"first_stage_model.{k}": v[:, :, None, None].contiguous() if ".attn_1." in k and v.ndim == 2 else v
        for k, v in renamed.items()
    }


# --- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_sd_turbo(tmp_path_factory):
    """Random SD-Turbo components and a folder holding them the way a user would."""
    torch.manual_seed(0)
    unet, vae, taesd = (build_component(c, "cpu").eval() for c in (UNET, VAE, TAESD))
    root = tmp_path_factory.mktemp("sd_turbo_random")
    checkpoint = root / "checkpoints" / "sd_turbo.safetensors"
    checkpoint.parent.mkdir()
    save_file({**unet_to_ldm(unet.state_dict()), **vae_to_ldm(vae.state_dict())}, checkpoint)
    cached_taesd = (
        root
        / "hf"
        / "hub"
        / "models--madebyollin--taesd"
        / "snapshots"
        / TAESD_REVISION
        / "diffusion_pytorch_model.safetensors"
    )
    cached_taesd.parent.mkdir(parents=True)
    save_file(taesd.state_dict(), cached_taesd)
    yield unet, vae, taesd, root
    shutil.rmtree(root)  # several GB; pytest would keep them for a while


@pytest.fixture
def offline(random_sd_turbo, monkeypatch):
    root = random_sd_turbo[3]
    monkeypatch.chdir(root)
    monkeypatch.delenv("PROMPTUS_CHECKPOINTS", raising=False)
    monkeypatch.setenv("PROMPTUS_CACHE", str(root / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("SD-Turbo loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return root


def _assert_same_weights(loaded, original):
    expected = original.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_random_sd_turbo_single_file_loads_and_generates(random_sd_turbo, offline):
    unet, vae, taesd, root = random_sd_turbo
    model = load_sd_turbo(device="cpu")

    assert model.sources["denoiser"].samefile(root / "checkpoints" / "sd_turbo.safetensors")
    assert "models--madebyollin--taesd" in str(model.sources["decoder"])
    _assert_same_weights(model.unet, unet)
    _assert_same_weights(model.vae, vae)
    _assert_same_weights(model.taesd, taesd)

    identity = model.identity()
    assert identity.name == "sd-turbo"
    assert identity.denoiser_sha256 == fingerprint.fingerprint_state_dict(unet.state_dict())
    encoder_weights = {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    assert identity.encoder_sha256 == fingerprint.fingerprint_state_dict(encoder_weights)
    decoder_weights = {k: v for k, v in taesd.state_dict().items() if k.startswith("decoder.")}
    assert identity.decoder_sha256 == fingerprint.fingerprint_state_dict(decoder_weights)
    assert len(json.loads((root / "cache" / "fingerprints.json").read_text())) == 3

    constants = GenerationConstants()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        frame = torch.rand(1, 3, 64, 64, generator=generator)
        latent = model.encode_image(frame)  # (1, 4, 8, 8)
        assert latent.shape == (1, 4, 8, 8) and latent.dtype == torch.float32
        assert torch.equal(model.encode_image(frame), latent)  # posterior mean: deterministic
        noise = torch.randn(1, 4, 8, 8, generator=generator)
        noisy = constants.latent_weight * latent + constants.noise_weight * noise
        prompt = torch.randn(1, 77, 1024, generator=generator)
        eps = model.denoise(noisy, prompt, constants.timestep)  # (1, 4, 8, 8)
        a = constants.alpha_cumprod
        x0 = (noisy - math.sqrt(1 - a) * eps) / math.sqrt(a)
        pixels = model.decode_latent(x0)  # (1, 3, 64, 64)
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()
    assert pixels.shape == (1, 3, 64, 64) and torch.isfinite(pixels).all()


def test_random_sd_turbo_second_load_reuses_fingerprints(random_sd_turbo, offline, monkeypatch):
    first = load_sd_turbo(device="cpu").identity()

    def must_not_hash(state_dict):
        raise AssertionError("fingerprint recomputed although the files did not change")

    monkeypatch.setattr(fingerprint, "fingerprint_state_dict", must_not_hash)
    assert load_sd_turbo(device="cpu").identity() == first


def test_random_sd_turbo_diffusers_folder_has_the_same_fingerprints(random_sd_turbo, offline):
    unet, vae, _, root = random_sd_turbo
    folder = root / "diffusers-layout"
    for name, module in (("unet", unet), ("vae", vae)):
        (folder / name).mkdir(parents=True)
        save_file(module.state_dict(), folder / name / "diffusion_pytorch_model.safetensors")
    single_file = load_sd_turbo(device="cpu").identity()

    model = load_sd_turbo(folder, device="cpu", dtype="bfloat16")
    assert model.sources["denoiser"] == folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert model.unet.dtype == model.taesd.dtype == torch.bfloat16 and model.vae.dtype == torch.float32
    assert model.identity() == single_file  # fingerprints cover the weights, not the file layout or the cast
    _assert_same_weights(model.vae, vae)
