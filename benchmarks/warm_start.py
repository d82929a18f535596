"""Does warm start (previous keyframe's factors) need fewer fitting iterations than random init?

For each keyframe after the first, fit twice from the same closed-loop state, once warm and
once cold, for a fixed number of iterations without early stopping, and print:
- the best loss each reaches, and
- how many iterations warm start needs to match cold start's final best loss.

    python benchmarks/warm_start.py [--clip ../shared/data/sky_512.mp4] [--size 128] [--iterations 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from promptus_codec.container.records import QuantScheme, KeyframeRecord
from promptus_codec.decoder.driver import decode_interval, dequantized_factors
from promptus_codec.decoder.torch_runtime import TorchRuntime
from promptus_codec.encoder.encode import frames_to_tensor
from promptus_codec.encoder.fit import FitTask, PerceptualLoss, fit_keyframe
from promptus_codec.encoder.options import FitConfig
from promptus_codec.media import apply_geometry, open_video, plan_geometry
from promptus_codec.models.registry import load_model
from promptus_codec.noise import initial_noise
from promptus_codec.prompt import Factors

ROOT = Path(__file__).resolve().parents[1]


def load_frames(path: str, size: int, count: int) -> np.ndarray:
    with open_video(path) as source:
        w, h, geometry = plan_geometry(source.width, source.height, (size, size))
        return np.stack([apply_geometry(f, w, h, geometry) for _, f in zip(range(count), source)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default=str(ROOT.parent / "shared" / "data" / "sky_512.mp4"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--keyframes", type=int, default=3, help="keyframes after the first")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model("tiny", device="cpu")
    frames = load_frames(args.clip, args.size, args.interval * args.keyframes + 1)
    runtime = TorchRuntime(model, model.spec.generation)
    noise = initial_noise(88, (4, args.size // 8, args.size // 8))
    noise_t = torch.from_numpy(noise)
    config = FitConfig(first_iterations=args.iterations, iterations=args.iterations, early_stop_patience=0, alpha=1.0)
    perceptual = PerceptualLoss(None)

    def fit(targets, z_prev, frame, previous, warm):
        losses = []
        start = time.perf_counter()
        task = FitTask(
            frames_to_tensor(targets, "cpu"),
            torch.from_numpy(z_prev),
            noise_t,
            frame_index=frame,
            rank=args.rank,
            previous=previous,
            start=warm,
        )
        result = fit_keyframe(
            runtime.generator, task, config, perceptual, on_step=lambda step, value, best: losses.append(best)
        )
        return result, losses, time.perf_counter() - start

    def as_torch(f):
        return Factors(f.frame_index, torch.from_numpy(f.u), torch.from_numpy(f.v))

    def record(frame, r):
        return KeyframeRecord(
            frame, args.rank, QuantScheme.AFFINE_INT8, r.u_scale, r.u_zero_point, r.v_scale, r.v_zero_point, r.u, r.v
        )

    with torch.inference_mode():
        z_prev = model.encode_image(frames_to_tensor(frames[:1], "cpu")).numpy()
    first, _, _ = fit(frames[:1], z_prev, 0, None, None)
    previous = dequantized_factors(record(0, first))
    z_prev = decode_interval(runtime, z_prev, noise, None, previous).next_latent
    rows = []
    for i in range(1, args.keyframes + 1):
        frame = i * args.interval
        targets = frames[frame - args.interval + 1 : frame + 1]
        cold, cold_curve, cold_s = fit(targets, z_prev, frame, as_torch(previous), None)
        warm, warm_curve, warm_s = fit(targets, z_prev, frame, as_torch(previous), as_torch(previous))
        reach = next((n + 1 for n, loss in enumerate(warm_curve) if loss <= cold.best_loss), None)
        rows.append(
            dict(
                keyframe=frame,
                cold_best=cold.best_loss,
                warm_best=warm.best_loss,
                cold_start=cold.initial_loss,
                warm_start=warm.initial_loss,
                warm_iterations_to_cold_best=reach,
                iterations=args.iterations,
                cold_s=cold_s,
                warm_s=warm_s,
            )
        )
        factors = dequantized_factors(record(frame, warm))
        z_prev = decode_interval(runtime, z_prev, noise, previous, factors).next_latent
        previous = factors

    print(
        f"tiny model, {args.size}x{args.size}, rank {args.rank}, K {args.interval}, {args.iterations} iterations, "
        f"MSE loss, {Path(args.clip).name}"
    )
    print(
        f"{'keyframe':>8} {'cold start':>11} {'cold best':>10} {'warm start':>11} {'warm best':>10} "
        f"{'warm its to cold best':>22}"
    )
    for r in rows:
        print(
            f"{r['keyframe']:>8} {r['cold_start']:>11.5f} {r['cold_best']:>10.5f} "
            f"{r['warm_start']:>11.5f} {r['warm_best']:>10.5f} "
            f"{str(r['warm_iterations_to_cold_best']):>22}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
