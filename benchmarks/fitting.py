"""Fitting quality against UNet passes and wall time: the reference preset against ours.

    python benchmarks/fitting.py [--model mini] [--budgets 10,30,100,300] [--presets reference,fast,fast+amortized]
                                 [--keyframe first|later] [--set FIELD=VALUE ...] [--json out.json] [--plot out.png]

On ../shared/data/sky_512.mp4 at 128x128 (crop), rank 8, K = 10. For each preset and each
iteration budget B, one keyframe is fitted from scratch with the preset's procedure and B
iterations (fitting is seeded, so a run with budget B repeats the first B iterations of any
longer run), then its stored factors are decoded and scored:

    --keyframe first   frame 0, a scene's first keyframe, from the scene latent
    --keyframe later   frame 10 through frames 1..10, after a keyframe 0 fitted once with fast

A "UNet pass" is one frame through the generator forward and backward: the reference's
procedure spends K + 2 an iteration on a later keyframe (one Adam step each), fast about 2K
(a step per frame, each beside the worst frame), slow, paper and draft K + 1 in one batched
step; all spend 1 on a first keyframe. "+amortized" starts from the model's
prompt encoder (mini's, --initializer FILE, or --initializer joint), "+warm" from the previous
keyframe's factors (later only). With --keyframe later "+amortized" is a comparison only:
promptus encode --init amortized starts a later keyframe warm. The
perceptual terms need backbone weights this machine does not have, so every preset runs
with --perceptual none: alpha still weighs the MSE. ``--set l1_weight=0.025`` changes a
FitConfig field in every preset named (an ablation); the rows' names say so.
Prints one row per (preset, budget) and writes JSON and a plot if asked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptus_codec.encoder.encode import frames_to_tensor  # noqa: E402
from promptus_codec.encoder.fit import FitTask, PerceptualLoss, fit_keyframe  # noqa: E402
from promptus_codec.encoder.options import PRESETS, FitConfig  # noqa: E402
from promptus_codec.generate import CountingStep, GenerationStep, initial_noise_tensor  # noqa: E402
from promptus_codec.metrics.quality import luma, psnr  # noqa: E402
from promptus_codec.models.mini import load_joint_prompt_encoder  # noqa: E402
from promptus_codec.models.registry import INITIALIZER_MODELS, load_initializer, load_model  # noqa: E402
from promptus_codec.prompt import Factors, dequantize, interval_prompts  # noqa: E402
from warm_start import load_frames  # noqa: E402  (the first frames as the encoder crops them; benchmarks/ is on sys.path)


def stored(result, index: int) -> Factors:
    """The factors as a decoder reads them back: float32 torch (m, r), (r, n)."""
    u = dequantize(result.u, result.u_scale, result.u_zero_point)
    v = dequantize(result.v, result.v_scale, result.v_zero_point)
    return Factors(index, torch.from_numpy(u), torch.from_numpy(v))


def field_override(text: str) -> tuple[str, object]:
    """ "l1_weight=0.025" -> ("l1_weight", 0.025), typed as FitConfig's default for that field."""
    field, _, value = text.partition("=")
    defaults = FitConfig().to_json()
    if field not in defaults or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE with FIELD one of {', '.join(defaults)}")
    default = defaults[field]
    if isinstance(default, str):
        return field, value
    if default is None or isinstance(default, bool):  # "25", "true": JSON says which type
        return field, json.loads(value)
    return field, type(default)(value)


def to_uint8(images: torch.Tensor) -> np.ndarray:  # (B, 3, H, W) in [0, 1] -> (B, H, W, 3)
    return np.rint(images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(ROOT.parent / "shared" / "data" / "sky_512.mp4"))
    parser.add_argument("--model", default="mini")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--budgets", default="10,30,100,300")
    parser.add_argument("--presets", default="reference,fast,fast+amortized")
    parser.add_argument("--keyframe", choices=["first", "later"], default="first")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--patience", type=int, default=None, help="override our presets' early_stop_patience (0: run every iteration)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=field_override,
        metavar="FIELD=VALUE",
        help="change a FitConfig field in every preset, e.g. l1_weight=0 (repeatable)",
    )
    parser.add_argument(
        "--initializer",
        default=None,
        metavar="FILE",
        help="+amortized starts from this prompt encoder (scripts/train_initializer.py) instead of the model's "
        "own; 'joint': the one trained jointly with mini (inside mini.safetensors), no longer used by encode",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu", dtype="fp32")
    step = CountingStep(GenerationStep(model))
    frames = load_frames(args.clip, args.size, args.interval + 1)  # (K + 1, S, S, 3)
    latent_shape = (model.spec.latent_channels, args.size // 8, args.size // 8)
    noise = initial_noise_tensor(model.spec.generation, latent_shape)
    initializer = None
    if args.initializer == "joint":
        initializer = load_joint_prompt_encoder()[0]
    elif args.initializer or args.model in INITIALIZER_MODELS:
        initializer = load_initializer(args.model, model.identity(), file=args.initializer)[0]

    def scene_latent(rule: str) -> torch.Tensor:
        sample = torch.Generator().manual_seed(0 * 1_000_003 + 0) if rule == "sample" else None
        with torch.no_grad():
            return model.encode_image(frames_to_tensor(frames[:1], "cpu"), sample).float()  # (1, C, h, w)

    def amortized(index: int) -> Factors:
        with torch.no_grad():
            u, v = initializer(frames_to_tensor(frames[index : index + 1], "cpu"))
        return Factors(index, u[0, :, : args.rank], v[0, : args.rank])

    previous, z_prev_later = None, None
    if args.keyframe == "later":  # keyframe 0 once, with fast, from the mean latent: the same start for all
        first = fit_keyframe(
            step,
            FitTask(frames_to_tensor(frames[:1], "cpu"), scene_latent("mean"), noise, 0, args.rank),
            PRESETS["fast"],
            PerceptualLoss(None),
        )
        previous = stored(first, 0)
        with torch.no_grad():
            latents = step.step.latents(scene_latent("mean"), noise, previous.prompt()[None])
            z_prev_later = GenerationStep.last_latent(latents)

    rows = []
    budgets = [int(b) for b in args.budgets.split(",")]
    for name in args.presets.split(","):
        preset, _, init = name.partition("+")
        if init == "amortized" and initializer is None:
            print(f"{name}: skipped, {args.model} has no prompt encoder")
            continue
        base = PRESETS[preset]
        for budget in budgets:
            config = replace(base, first_iterations=budget, iterations=budget)
            config = replace(config, init="random") if base.init == "auto" else config
            if args.patience is not None and base.procedure != "reference":
                config = replace(config, early_stop_patience=args.patience)
            config = replace(config, **dict(args.overrides))
            if args.keyframe == "first":
                index, targets, z_prev, prev = 0, frames[:1], scene_latent(config.scene_latent), None
            else:
                index, targets, z_prev, prev = args.interval, frames[1:], z_prev_later, previous
            start = amortized(index) if init == "amortized" else prev if init == "warm" else None
            task = FitTask(frames_to_tensor(targets, "cpu"), z_prev, noise, index, args.rank, prev, start)
            step.calls.clear()
            started = time.perf_counter()
            result = fit_keyframe(step, task, config, PerceptualLoss(None))
            wall = time.perf_counter() - started
            passes = step.passes
            factors = stored(result, index)
            with torch.no_grad():
                prompts = factors.prompt()[None] if prev is None else interval_prompts(prev, factors)
                _, images = step.step(z_prev, noise, prompts)
            decoded = to_uint8(images)
            scores = [psnr(luma(a), luma(b)) for a, b in zip(targets, decoded)]
            label = " ".join([name] + [f"{k}={v}" for k, v in args.overrides])
            row = dict(
                preset=label,
                budget=budget,
                iterations=result.iterations,
                unet_passes=passes,
                wall_s=round(wall, 2),
                loss=result.best_loss,
                keyframe_psnr_y=round(scores[-1], 3),
                mean_psnr_y=round(float(np.mean(scores)), 3),
            )
            rows.append(row)
            print(
                f"{label:>16} budget {budget:>6}: {passes:>7} passes {wall:>8.1f} s  loss {result.best_loss:.5f}  "
                f"keyframe PSNR-Y {scores[-1]:.2f} dB  interval {np.mean(scores):.2f} dB",
                flush=True,
            )
    meta = dict(
        model=args.model,
        clip=Path(args.clip).name,
        size=args.size,
        rank=args.rank,
        interval=args.interval,
        keyframe=args.keyframe,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        perceptual="none",
    )
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    if args.plot and rows:
        plot(rows, meta, args.plot)
    return 0


def plot(rows: list[dict], meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    reference = [r for r in rows if r["preset"] == "reference"]
    for name in dict.fromkeys(r["preset"] for r in rows):
        mine = sorted((r for r in rows if r["preset"] == name), key=lambda r: r["unet_passes"])
        for ax, key in zip(axes, ("unet_passes", "wall_s")):
            ax.plot([r[key] for r in mine], [r["keyframe_psnr_y"] for r in mine], marker="o", label=name)
    if reference:
        target = max(reference, key=lambda r: r["budget"])
        for ax in axes:
            ax.axhline(
                target["keyframe_psnr_y"],
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"reference at {target['budget']} iterations",
            )
    for ax, label in zip(axes, ("UNet passes (frames forward + backward)", "wall time (s, CPU)")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("keyframe PSNR-Y (dB)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"fitting a {meta['keyframe']} keyframe: {meta['model']}, {meta['clip']} {meta['size']}x{meta['size']}, "
        f"rank {meta['rank']}, K {meta['interval']}, MSE only",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
