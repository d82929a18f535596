"""Train an amortised prompt encoder (``--init amortized``) for a frozen generator.

    python scripts/train_initializer.py --model sd-turbo --weights checkpoints/ --device cuda \\
        --size 512 --batch 8 --steps 20000 -o initializer-sd-turbo.safetensors      # a GPU's job
    python scripts/train_initializer.py --model mini --size 128 --steps 200 -o /tmp/init.safetensors   # CPU check

The generator (UNet, VAE encoder, decoder) stays frozen; only the PromptEncoder of
promptus_codec/models/mini.py learns. One sample is the codec's own situation, as in
scripts/train_builtin.py (whose data pipeline this reuses, with the same licensed sources):

    frames f_k, f_k+s, f_k+K of a clip or a pan/zoom over a still
    z_prev  = E(f_k)                                        the scene / previous latent
    u, v    = fake_quant(interpolate(P(f_k), P(f_k+K), s/K))  rank r ~ U{4..max_rank}, 8 bits
    image   = D(x0(0.05 z_prev + 0.95 N, UNet(., 999, u v / sqrt(r))))   N new per sample
    loss    = MSE(image, f_k+s)

Writes the encoder as float16 safetensors and, beside it, a JSON with its fingerprint, its
shape, the generator's identity, the settings and the loss curve; ``promptus encode
--initializer FILE`` starts fitting from it (and refuses it for any other generator). Never
run for real SD-Turbo (no weights and no GPU where it was written); tested on mini and on the
SD-Turbo architecture with random weights at 64 x 64 (tests/model/test_train_initializer.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_builtin import TrainConfig, fake_quant, load_pool, sample_batch  # noqa: E402

from promptus_codec.fileio import atomic_path  # noqa: E402
from promptus_codec.generate import noisy_latent, x0_from_prediction  # noqa: E402
from promptus_codec.models.fingerprint import fingerprint_state_dict  # noqa: E402
from promptus_codec.models.mini import MiniConfig, PromptEncoder, generator_record  # noqa: E402


@dataclass(frozen=True)
class InitializerConfig:
    seed: int = 0
    size: int = 128  # square training crops
    batch: int = 8
    steps: int = 200
    lr: float = 1e-3  # AdamW, cosine to lr_floor
    lr_floor: float = 0.05  # fraction of lr at the last step
    min_rank: int = 4
    grad_clip: float = 1.0
    unit_factors: bool = True  # factors at RMS 1, where fitting's Adam steps are sized (PromptEncoder's docstring)
    threads: int = 1  # torch threads; the float results, and so the weights, depend on it


def generate(model, z_prev: torch.Tensor, noise: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """One generation step per sample: (B, C, h, w) x 2, (B, m, n) -> images (B, 3, H, W) in [0, 1].

    generate.py's arithmetic with a z_prev and a noise of their own for each sample (a decode
    shares one of each across an interval).
    """
    constants = model.spec.generation
    noisy = noisy_latent(z_prev, noise, constants)  # (B, C, h, w) float32
    out = model.denoise(noisy.to(model.dtype), prompts.to(model.dtype), constants.timestep)
    return model.decode_latent(x0_from_prediction(noisy, out, constants).to(model.dtype)).float()


def train(model, encoder: PromptEncoder, cfg: InitializerConfig, sampler, log=print) -> list[dict]:
    """Train ``encoder`` for the frozen ``model``; ``sampler(g)`` gives (f_k, f_s, f_K, s, K) batches."""
    device = model.device
    encoder.to(device).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    curve = []
    for step in range(cfg.steps):
        t = step / max(1, cfg.steps - 1)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * t)))
        f_k, f_s, f_K, steps, intervals = (x.to(device) for x in sampler(g))
        rank = int(torch.randint(cfg.min_rank, encoder.max_rank + 1, (), generator=g))
        with torch.no_grad():
            z_prev = model.encode_image(f_k).float()  # (B, C, h, w)
        u, v = encoder(torch.cat([f_k, f_K]))  # (2B, m, R), (2B, R, n)
        u, v = u[..., :rank], v[:, :rank]
        a = (steps.float() / intervals.float()).view(-1, 1, 1)
        batch = f_k.shape[0]
        u = fake_quant((1 - a) * u[:batch] + a * u[batch:])
        v = fake_quant((1 - a) * v[:batch] + a * v[batch:])
        noise = torch.randn(z_prev.shape, generator=g).to(device)
        images = generate(model, z_prev, noise, u @ v / math.sqrt(rank))
        loss = F.mse_loss(images, f_s)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
        optimizer.step()
        curve.append(dict(step=step + 1, mse=round(loss.item(), 6), rank=rank))
        if log and (step + 1) % max(1, cfg.steps // 20) == 0:
            db = 10 * math.log10(1 / max(loss.item(), 1e-12))
            log(f"step {step + 1}/{cfg.steps}: mse {loss.item():.5f} ({db:.2f} dB)")
    return curve


def new_encoder(spec, cfg: InitializerConfig) -> PromptEncoder:
    """An untrained prompt encoder of mini's shape for a generator with ``spec``'s prompt shape."""
    shape = dict(tokens=spec.prompt_tokens, prompt_dim=spec.prompt_dim, unit_factors=cfg.unit_factors)
    return PromptEncoder(**MiniConfig().prompt_encoder_kwargs() | shape)


def save(encoder: PromptEncoder, model, cfg: InitializerConfig, curve: list[dict], wall: float, path: Path) -> dict:
    """The encoder as float16 safetensors at ``path`` and its JSON record beside it (``path``.json)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    record = dict(
        fingerprint=fingerprint_state_dict(state).hex(),
        generator=generator_record(model.identity()),  # load_prompt_encoder_file refuses other generators
        prompt_encoder=encoder.kwargs(),  # the shape, to rebuild it
        config=asdict(cfg),
        steps=len(curve),
        wall_s=round(wall, 1),
        torch=torch.__version__,
        loss_curve=curve,
    )
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    with atomic_path(Path(f"{path}.json")) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini", help="the frozen generator: mini, tiny or sd-turbo")
    parser.add_argument("--weights", default=None, help="sd-turbo weights, as for promptus encode --weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--size", type=int, default=InitializerConfig.size)
    parser.add_argument("--batch", type=int, default=InitializerConfig.batch)
    parser.add_argument("--steps", type=int, default=InitializerConfig.steps)
    parser.add_argument("--lr", type=float, default=InitializerConfig.lr)
    parser.add_argument("--seed", type=int, default=InitializerConfig.seed)
    parser.add_argument("--threads", type=int, default=InitializerConfig.threads)
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    args = parser.parse_args()

    from promptus_codec.models.registry import load_model

    cfg = InitializerConfig(
        seed=args.seed, size=args.size, batch=args.batch, steps=args.steps, lr=args.lr, threads=args.threads
    )
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = load_model(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    for network in (model.unet, model.vae, model.taesd):
        network.requires_grad_(False)
    encoder = new_encoder(model.spec, cfg)
    stills, clip = load_pool()
    sampling = TrainConfig(seed=cfg.seed, size=cfg.size, batch=cfg.batch)
    started = time.perf_counter()
    curve = train(model, encoder, cfg, lambda g: sample_batch(stills, clip, sampling, g, cfg.size))
    record = save(encoder, model, cfg, curve, time.perf_counter() - started, args.output)
    print(f"wrote {args.output} (fingerprint {record['fingerprint'][:16]}...) and {args.output}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
