"""Run any number of frames through fixed-batch engines: split, pad with the last prompt, drop.

    prompts (n, m, n_dim) --plan(n, batches)--> pieces [(count, engine batch), ...]
    piece: prompts[start:start+count] + (batch - count) copies of its last prompt  (batch, m, n_dim)
           --run(batch, ...)--> latents, images; the first ``count`` frames are kept

Every frame of a batch sees the same noisy latent and its own prompt only, so padding does not
change the frames kept. The plan minimises a cost of ``batch + CALL_COST`` frames per call: with
engines {1, 10}, 10 frames are one call, a scene's first frame is one batch-1 call and 16 frames
are two batch-10 calls; with {10} alone, that first frame is padded to 10.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CALL_COST = 1  # frames' worth of compute a call costs beyond its batch (weights read once per call)


def plan(frames: int, batches: Sequence[int]) -> list[tuple[int, int]]:
    """[(frames in this call, engine batch), ...] covering ``frames`` at the least cost (module docstring)."""
    batches = sorted(set(batches))
    if not batches or batches[0] < 1:
        raise ValueError(f"engine batches {batches}: expected at least one positive batch")
    best: list[tuple[int, int, tuple[int, ...]]] = [(0, 0, ())]  # per frame count: (cost, calls, batches)
    for n in range(1, frames + 1):
        best.append(min(
            (cost + b + CALL_COST, calls + 1, used + (b,))
            for b in batches
            for cost, calls, used in [best[max(0, n - b)]]
        ))
    pieces, left = [], frames
    for b in sorted(best[frames][2], reverse=True):  # full calls first, the padded one last
        pieces.append((min(b, left), b))
        left -= pieces[-1][0]
    return pieces


Run = Callable[[int, np.ndarray, np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def generate_padded(run: Run, batches: Sequence[int], z_prev: np.ndarray, noise: np.ndarray,
                    prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``run(batch, z_prev, noise, prompts (batch, m, n))`` over all prompts: latents (B, C, h, w), images (B, 3, H, W)."""
    latents, images, start = [], [], 0
    for count, batch in plan(len(prompts), batches):
        chunk = prompts[start : start + count]  # (count, m, n)
        if count < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])  # (batch, m, n)
        chunk_latents, chunk_images = run(batch, z_prev, noise, np.ascontiguousarray(chunk))
        latents.append(chunk_latents[:count])
        images.append(chunk_images[:count])
        start += count
    return np.concatenate(latents), np.concatenate(images)
