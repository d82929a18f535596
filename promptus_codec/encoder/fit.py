"""Prompt fitting: find one keyframe's factors U (m, r), V (r, n) by gradient descent.

The loss runs through :class:`promptus_codec.generate.GenerationStep`, the same module every
decoder runs, on the factors *as they will be stored*: an 8-bit fake quantiser with a
straight-through gradient sits between the trainable floats and the generator.

    u, v (float, trainable) --fake_quant--> û, v̂ --interpolate from the previous keyframe's
    stored factors--> prompts (B, m, n) --GenerationStep(z_prev, N0)--> images (B, 3, H, W)
    --> loss = α·MSE + (1-α)·LPIPS + λ·mean|c| (+ β·temporal) against the interval's frames

A scene's first keyframe is fitted alone, from the scene latent. Every later keyframe is
fitted through all frames of its interval, which share the noisy input made from the
previous keyframe's generated latent (interpolation-aware fitting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from promptus_codec.encoder.options import FitConfig
from promptus_codec.prompt import INT8_MAX, INT8_MIN, Factors, interpolate, quant_params


def fake_quant(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """x rounded to the int8 grid it will be stored on; gradient passes straight through.

    Returns (dequantised x, scale, zero_point); scale and zero point are the stored ones.
    """
    scale, zero_point = quant_params(x.min().item(), x.max().item())
    q = quantize_codes(x.detach(), scale, zero_point)
    xq = (q.float() - np.float32(zero_point)) * np.float32(scale)
    return x + (xq - x).detach(), scale, zero_point


def quantize_codes(x: torch.Tensor, scale: float, zero_point: float) -> torch.Tensor:
    """int8 codes of x for (scale, zero_point): round half to even, as prompt.quantize does."""
    q = torch.round(x.float() / np.float32(scale) + np.float32(zero_point))
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


@dataclass(frozen=True)
class FitTask:
    """One keyframe to fit, and what it is fitted from."""

    targets: torch.Tensor  # (K, 3, H, W) in [0, 1]: frames previous.frame_index+1 .. frame_index, or the keyframe alone
    z_prev: torch.Tensor  # (1, C, h, w): the scene latent, or the previous keyframe's x0
    noise: torch.Tensor  # (1, C, h, w): the stream's N0
    frame_index: int
    rank: int
    previous: Factors | None = None  # the previous keyframe's *stored* (dequantised) factors; None opens a scene
    start: Factors | None = None  # where to start (previous keyframe, prompt encoder); None = seeded random


@dataclass(frozen=True)
class FitResult:
    """The stored form of the best iterate, and how fitting went."""

    u: np.ndarray  # (m, r) int8
    v: np.ndarray  # (r, n) int8
    u_scale: float
    u_zero_point: float
    v_scale: float
    v_zero_point: float
    best_loss: float
    initial_loss: float
    iterations: int  # iterations run until this result was returned
    frame_losses: list[float]  # per frame of the interval, at the best iterate


class PerceptualLoss(torch.nn.Module):
    """LPIPS on images in [0, 1], or zero when disabled."""

    def __init__(self, lpips_module: torch.nn.Module | None):
        super().__init__()
        self.lpips = lpips_module

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # -> (B,)
        if self.lpips is None:
            return images.new_zeros(images.shape[0])
        return self.lpips(images * 2 - 1, targets * 2 - 1, normalize=False).flatten()


def _initial_factors(task: FitTask, m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if task.start is not None and task.start.rank == task.rank:
        return torch.as_tensor(task.start.u).clone(), torch.as_tensor(task.start.v).clone()
    g = torch.Generator().manual_seed(seed * 1_000_003 + task.frame_index)
    # c = u v / sqrt(r) then has unit-variance entries, the scale of CLIP embeddings.
    return torch.randn(m, task.rank, generator=g), torch.randn(task.rank, n, generator=g)


def fit_keyframe(
    generator: torch.nn.Module,
    task: FitTask,
    config: FitConfig,
    perceptual: PerceptualLoss,
    on_step=None,
) -> FitResult:
    """Fit keyframe ``task.frame_index`` through ``generator`` (promptus_codec.generate.GenerationStep).

    ``on_step(step, loss, best_loss)`` hears every iteration.
    """
    z_prev, noise, targets, previous, frame_index = task.z_prev, task.noise, task.targets, task.previous, task.frame_index
    device, dtype = z_prev.device, z_prev.dtype
    frames = targets.shape[0]
    first_frame = frame_index - frames + 1
    m, n = generator.prompt_shape
    u0, v0 = _initial_factors(task, m, n, config.seed)
    u = torch.nn.Parameter(u0.to(device, torch.float32))
    v = torch.nn.Parameter(v0.to(device, torch.float32))
    optimizer = torch.optim.Adam([u, v], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=config.plateau_patience, threshold=config.min_improvement
    )
    previous_prompt = None if previous is None else previous.prompt()
    frame_losses = torch.full((frames,), float("inf"))
    best, initial = None, None
    since_best = 0
    total_iterations = config.first_iterations if previous is None else config.iterations
    windows = math.ceil(frames / config.max_batch)

    for step in range(max(total_iterations, 1)):
        if best is not None and not (torch.isfinite(u).all() and torch.isfinite(v).all()):
            break  # the iterate diverged (reduced precision): keep the best one so far
        # A window of the interval, plus the worst frame of the previous pass visited again.
        start = (step % windows) * config.max_batch
        batch = list(range(start, min(start + config.max_batch, frames)))
        worst = int(torch.argmax(frame_losses)) if torch.isfinite(frame_losses).all() else None
        if worst is not None and frames > 1:
            batch.append(worst)

        uq, u_scale, u_zp = fake_quant(u)
        vq, v_scale, v_zp = fake_quant(v)
        current = Factors(frame_index, uq, vq)
        if previous is None:
            prompts = current.prompt()[None]  # (1, m, n)
        else:
            prompts = torch.stack([interpolate(previous, current, first_frame + i) for i in batch])  # (B, m, n)
        _, images = generator(z_prev, noise, prompts.to(dtype))  # (B, 3, H, W)
        images = images.float()
        target = targets[batch]
        per_frame = config.alpha * ((images - target) ** 2).flatten(1).mean(1)
        if config.alpha < 1:
            per_frame = per_frame + (1 - config.alpha) * perceptual(images, target)
        loss = per_frame.mean() + config.l1_weight * prompts.abs().mean()
        if config.temporal_beta and previous_prompt is not None:
            loss = loss + config.temporal_beta * ((current.prompt() - previous_prompt) ** 2).mean()

        value = loss.item()
        with torch.no_grad():
            for i, f in zip(batch, per_frame.detach().float().tolist()):
                frame_losses[i] = f
        if initial is None:
            initial = value
        if best is None or value < best.best_loss * (1 - config.min_improvement):
            best = FitResult(
                u=quantize_codes(u.detach(), u_scale, u_zp).cpu().numpy(),
                v=quantize_codes(v.detach(), v_scale, v_zp).cpu().numpy(),
                u_scale=u_scale, u_zero_point=u_zp, v_scale=v_scale, v_zero_point=v_zp,
                best_loss=value, initial_loss=initial, iterations=step + 1, frame_losses=frame_losses.tolist(),
            )
            since_best = 0
        else:
            since_best += 1
        if on_step:
            on_step(step, value, best.best_loss)
        if config.early_stop_patience and since_best >= config.early_stop_patience:
            break
        if step + 1 == total_iterations:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step(value)

    return replace(best, iterations=step + 1)
