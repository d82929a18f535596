"""Write the built-in tiny model: promptus_codec/models/weights/tiny.{safetensors,json}.

Run once and commit both files; the codec only ever loads them.

    python scripts/make_tiny_weights.py           # (re)write the two files
    python scripts/make_tiny_weights.py --check   # rebuild in a temp folder, compare bytes

How the weights are made (seed 0, one CPU thread: a rerun on one machine is bit-identical):

1. diffusers' default init of the networks in ``TinyConfig``, rounded to float16, the dtype
   the file stores (so the calibration below sees the weights that will be loaded).
2. UNet calibration. At t=999, x0 = (x_t - sqrt(1-a) eps) / sqrt(a) with sqrt(a) = 0.068:
   a default-init UNet predicts eps unrelated to x_t, so x0 ~ 15 x_t, the decoder saturates
   and the prompt moves the image by < 0.1 %. Instead:
     a. a linear path carries x_t unchanged on channels 0-3 from conv_in, through the skip
        into the last up-block (its 1x1 shortcut), past its residual branches, to conv_norm_out,
        whose affine (small gain, bias +3) keeps SiLU near-linear there;
     b. conv_out is fitted by least squares so that eps = x_t / sqrt(1-a), i.e. x0 = 0;
     c. a random term on the other 28 channels is added to conv_out. Those channels carry the
        prompt through cross-attention, sharpened (to_k x4) and amplified (to_out x12), so x0
        has std ~1.5, most of it set by the prompt, and gradients reach the prompt.
3. The decoder's last conv is rescaled so pixels have mean 0.5, std 0.2 per channel.
4. The VAE's quant_conv is rescaled so scene latents (posterior mean x 0.18215) have zero
   mean and unit std on smooth random images, the scale of real SD latents.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptus_codec.container.records import GenerationConstants  # noqa: E402
from promptus_codec.fileio import atomic_path  # noqa: E402
from promptus_codec.models.fingerprint import fingerprint_state_dict, select  # noqa: E402
from promptus_codec.models.tiny import PARTS, WEIGHTS_DIR, TinyConfig, build_parts  # noqa: E402


@dataclass(frozen=True)
class Calibration:
    """Knobs of steps 2-4 above."""

    seed: int = 0  # torch.manual_seed for the default init and every calibration sample
    carried: int = 4  # channels of the linear x_t path: one per latent channel
    norm_gain: float = 0.25  # conv_norm_out gain on the carried channels: small, to stay...
    norm_bias: float = 3.0  # ...where SiLU is nearly linear (curvature < 0.5 % of slope)
    key_gain: float = 4.0  # sharper cross-attention, so single tokens matter, not just their mean
    cross_gain: float = 12.0  # louder cross-attention output, so the prompt sets most of x0
    prompt_mix: float = 0.2  # size of the random conv_out term on the prompt-carrying channels
    prompt_rank: int = 8  # calibration prompts are u v / sqrt(r), u, v ~ N(0, 1), like the encoder's
    batches: int = 4  # calibration batches per latent size
    batch: int = 8  # samples per batch
    latent_sizes: tuple[int, ...] = (8, 16, 32)  # 64, 128, 256 pixels: fit all sizes at once
    pixel_mean: float = 0.5  # decoder output statistics after step 3
    pixel_std: float = 0.2
    ridge: float = 1e-6  # least-squares regulariser, relative to the sample count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for tiny.safetensors and tiny.json")
    parser.add_argument("--check", action="store_true", help="rebuild in a temp folder and compare with --out")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            same = all(_sha256(Path(tmp) / n) == _sha256(args.out / n) for n in ("tiny.safetensors", "tiny.json"))
        print("identical to the committed files" if same else "DIFFERS from the committed files")
        return 0 if same else 1
    write(args.out)
    return 0


def write(out: Path, config: TinyConfig = TinyConfig(), cal: Calibration = Calibration()) -> None:
    """Build, calibrate and write the tiny model into ``out``."""
    torch.manual_seed(cal.seed)
    torch.set_num_threads(1)  # reductions in one fixed order
    torch.use_deterministic_algorithms(True)
    configs = {
        "unet": config.unet_kwargs(),
        "taesd": config.taesd_kwargs(),
        "vae": config.vae_kwargs(),
    }
    parts = build_parts(configs, device="cpu")
    for module in parts.values():
        _round_fp16(module)
        module.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(cal.seed + 1)
    unet, taesd, vae = parts["unet"], parts["taesd"], parts["vae"]
    with torch.no_grad():
        calibrate_unet(unet, cal, g)
        calibrate_decoder(unet, taesd, cal, g)
        calibrate_encoder(vae, cal, g)

    tensors, digests = {}, {}
    for part, field_name in zip(PARTS, ("denoiser", "decoder", "encoder")):
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in parts[part.key].state_dict().items()}
        tensors.update({f"{part.key}.{k}": v for k, v in state.items()})
        digests[field_name] = fingerprint_state_dict(select(state, part.fingerprinted)).hex()
    document = {
        "model": "tiny",
        "made_by": "scripts/make_tiny_weights.py",
        "tiny_config": asdict(config),
        "calibration": asdict(cal),
        "components": {key: _plain_config(parts[key]) for key in configs},
        "sha256": digests,  # ModelIdentity digests; tests/model checks the loaded model against them
    }
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tiny.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # one key: safetensors orders keys randomly
    with atomic_path(out / "tiny.json") as tmp:
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    for name in ("tiny.safetensors", "tiny.json"):
        (out / name).chmod(0o644)  # atomic_path's temporary files are private
    size = (out / "tiny.safetensors").stat().st_size
    print(f"wrote {out / 'tiny.safetensors'} ({size / 1e6:.2f} MB, sha256 {_sha256(out / 'tiny.safetensors')[:16]}...)")


# ---------------------------------------------------------------------------
# Calibration (steps 2-4 of the module docstring)
# ---------------------------------------------------------------------------


def calibrate_unet(unet, cal: Calibration, g: torch.Generator) -> None:
    """Make x0 = O(1) and prompt-driven (step 2)."""
    a = GenerationConstants().alpha_cumprod
    sqrt_1ma = math.sqrt(1 - a)
    c = cal.carried
    skip = unet.conv_in.out_channels  # the last up-block's skip input is conv_in's output

    # a. the linear path for x_t on channels 0..c-1
    unet.conv_in.weight[:c] = 0
    unet.conv_in.bias[:c] = 0
    unet.conv_in.weight[range(c), range(c), 1, 1] = 1  # centre tap: identity
    resnet = unet.up_blocks[-1].resnets[-1]  # input: cat(hidden, skip) -> conv_shortcut (1x1)
    hidden = resnet.conv_shortcut.in_channels - skip
    resnet.conv_shortcut.weight[:c] = 0
    resnet.conv_shortcut.bias[:c] = 0
    resnet.conv_shortcut.weight[range(c), [hidden + i for i in range(c)], 0, 0] = 1
    resnet.conv2.weight[:c] = 0  # its residual branch adds nothing there
    resnet.conv2.bias[:c] = 0
    attention = unet.up_blocks[-1].attentions[-1]  # residual: x + proj_out(...)
    attention.proj_out.weight[:c] = 0
    attention.proj_out.bias[:c] = 0
    unet.conv_norm_out.weight[:c] = cal.norm_gain
    unet.conv_norm_out.bias[:c] = cal.norm_bias
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.weight *= cal.key_gain
        elif name.endswith("attn2.to_out.0"):
            module.weight *= cal.cross_gain
    _round_fp16(unet)

    # b. least squares: conv_out(features) = x_t / sqrt(1-a)
    features = []
    hook = unet.conv_out.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    rows, targets = [], []
    for size in cal.latent_sizes:
        for _ in range(cal.batches):
            noisy, prompts = _calibration_batch(cal, size, g)
            features.clear()
            unet(noisy, 999, encoder_hidden_states=prompts)
            patches = F.unfold(features[0], 3, padding=1)  # (B, 9 * channels, h * w)
            rows.append(patches.transpose(1, 2).reshape(-1, patches.shape[1]))
            targets.append((noisy / sqrt_1ma).permute(0, 2, 3, 1).reshape(-1, noisy.shape[1]))
    hook.remove()
    x = torch.cat(rows).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, 9 * channels + 1)
    y = torch.cat(targets).double()  # (N, 4)
    gram = x.T @ x + cal.ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, x.T @ y)  # (9 * channels + 1, 4)
    weight = w[:-1].T.reshape(unet.conv_out.weight.shape).float()  # unfold order: channel, then 3x3

    # c. the prompt-driven term
    channels = unet.conv_out.in_channels
    random = torch.randn(unet.conv_out.weight.shape, generator=g)
    random[:, :c] = 0
    unet.conv_out.weight.copy_(weight + cal.prompt_mix * random / math.sqrt((channels - c) * 9))
    unet.conv_out.bias.copy_(w[-1].float())
    _round_fp16(unet)


def calibrate_decoder(unet, taesd, cal: Calibration, g: torch.Generator) -> None:
    """Rescale the last conv so pixels have the chosen mean and std per channel (step 3)."""
    from promptus_codec.generate import x0_from_prediction

    constants = GenerationConstants()
    outputs = []
    for size in cal.latent_sizes:
        noisy, prompts = _calibration_batch(cal, size, g)
        eps = unet(noisy, constants.timestep, encoder_hidden_states=prompts).sample
        x0 = x0_from_prediction(noisy, eps, constants)
        pixels = (taesd.decode(x0).sample + 1) / 2  # (B, 3, H, W), unclamped
        outputs.append(pixels.transpose(0, 1).reshape(3, -1))
    pixels = torch.cat(outputs, 1)  # (3, N)
    mean, std = pixels.mean(1), pixels.std(1)
    last = taesd.decoder.layers[-1]  # Conv2d(channels, 3), the only one with a bias
    gain = cal.pixel_std / std
    last.weight.mul_(gain[:, None, None, None])
    last.bias.copy_((last.bias - mean) * gain + cal.pixel_mean)
    _round_fp16(taesd)


def calibrate_encoder(vae, cal: Calibration, g: torch.Generator) -> None:
    """Rescale quant_conv's mean half so scene latents are ~N(0, 1) (step 4)."""
    latents = []
    for size in cal.latent_sizes:
        coarse = torch.rand(cal.batch, 3, size // 2, size // 2, generator=g)
        pixels = F.interpolate(coarse, scale_factor=16, mode="bilinear", align_corners=False)  # (B, 3, 8h, 8w)
        mean = vae.encode(pixels * 2 - 1).latent_dist.mean  # (B, 4, h, w)
        latents.append(mean.transpose(0, 1).reshape(mean.shape[1], -1))
    latents = torch.cat(latents, 1)  # (4, N)
    mean, std = latents.mean(1), latents.std(1)
    gain = 1 / (vae.config.scaling_factor * std)  # unit std after the 0.18215 scale
    c = vae.config.latent_channels
    conv = vae.quant_conv  # rows 0..c-1: posterior mean, c..2c-1: log-variance
    conv.weight[:c].mul_(gain[:, None, None, None])
    conv.bias[:c] = (conv.bias[:c] - mean) * gain
    _round_fp16(vae)


def _calibration_batch(cal: Calibration, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy latents as the codec makes them, and low-rank prompts as the encoder starts them."""
    constants = GenerationConstants()
    z_prev = torch.randn(cal.batch, 4, size, size, generator=g)  # (B, 4, h, w), SD-latent scale
    noise = torch.randn(1, 4, size, size, generator=g)  # one N0 shared by the batch, as in a stream
    noisy = constants.latent_weight * z_prev + constants.noise_weight * noise  # (B, 4, h, w)
    r = cal.prompt_rank
    u = torch.randn(cal.batch, 77, r, generator=g)
    v = torch.randn(cal.batch, r, 1024, generator=g)
    return noisy, u @ v / math.sqrt(r)  # (B, 77, 1024)


# ---------------------------------------------------------------------------


def _round_fp16(module: torch.nn.Module) -> None:
    """Round every weight to float16 values (kept in float32), as the file will store them."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _plain_config(module) -> dict:
    """The module's full diffusers config, JSON-ready, so loading never relies on defaults."""
    accepted = inspect.signature(type(module).__init__).parameters  # drops derived entries
    return {k: list(v) if isinstance(v, tuple) else v for k, v in module.config.items() if k in accepted}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
