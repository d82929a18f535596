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

Two procedures (FitConfig.procedure): :func:`fit_keyframe`'s batched one (ours), and
:func:`fit_keyframe_reference`, the reference implementation's inversion.py rule by rule.
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
    start: Factors | None = None  # where to start (previous keyframe, prompt encoder), of any rank
    # (resized_start); None = seeded random


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


class MinMaxQuantiser:
    """Ours (``quantiser="minmax"``): fake_quant over the current tensor's range, with RunningQuantiser's call."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(dequantised x with a straight-through gradient, int8 codes, stored scale, stored zero point)."""
        xq, scale, zero_point = fake_quant(x)
        return xq, quantize_codes(x.detach(), scale, zero_point), scale, zero_point


class RunningQuantiser:
    """The reference's fake quantiser (its QParam + FakeQuantize), for ``quantiser="running"``.

    Per-tensor affine uint8 over the range of *every* value seen so far, 0 included:
    scale = (max - min) / 255, zero point = round(255 - max / scale), q = round(clamp(x / scale
    + zero point, 0, 255)); straight-through gradient. Stored as int8 codes q - 128 with zero
    point - 128, which dequantise to the very same floats.
    """

    def __init__(self):
        self.low, self.high = 0.0, 0.0  # the running range starts at {0}, so it always holds 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(dequantised x with a straight-through gradient, int8 codes, stored scale, stored zero point)."""
        self.low = min(self.low, x.detach().min().item())
        self.high = max(self.high, x.detach().max().item())
        scale = np.float32((self.high - self.low) / 255)
        if not scale > 0:
            scale = np.float32(1.0)  # nothing but zeros seen yet
        zero_point = float(np.rint(np.float32(255) - np.float32(self.high) / scale))
        q = torch.round(torch.clamp(x.detach().float() / scale + np.float32(zero_point), 0, 255))
        xq = (q - np.float32(zero_point)) * scale
        return x + (xq - x).detach(), (q - 128).to(torch.int8), float(scale), zero_point - 128


class PerceptualLoss(torch.nn.Module):
    """A perceptual distance per image, on images in [0, 1]: LPIPS, the reference's VGG19 term, or zero.

    ``module`` maps (B, 3, H, W) images and targets in [0, 1] to (B,) distances; None = disabled.
    """

    def __init__(self, module: torch.nn.Module | None):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # -> (B,)
        if self.module is None:
            return images.new_zeros(images.shape[0])
        return self.module(images, targets).flatten()


def pixel_mse(images: torch.Tensor, targets: torch.Tensor, pixel_range: str) -> torch.Tensor:
    """(B,) MSE per image; "signed" measures on [-1, 1] as the reference does (4x the [0, 1] value)."""
    scale = 4.0 if pixel_range == "signed" else 1.0
    return scale * ((images - targets) ** 2).flatten(1).mean(1)


def _initial_factors(task: FitTask, m: int, n: int, config: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + task.frame_index)
    if task.start is not None and task.start.rank == task.rank:
        return torch.as_tensor(task.start.u).clone(), torch.as_tensor(task.start.v).clone()
    if task.start is not None:
        return resized_start(task.start, task.rank, g)
    if config.init == "uniform":  # the reference: torch.rand, U[0, 1)
        return torch.rand(m, task.rank, generator=g), torch.rand(task.rank, n, generator=g)
    # c = u v / sqrt(r) then has unit-variance entries, the scale of CLIP embeddings.
    return torch.randn(m, task.rank, generator=g), torch.randn(task.rank, n, generator=g)


def resized_start(start: Factors, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of another rank whose prompt is the best rank-``rank`` approximation of ``start``'s.

    From the SVD c = P S Q^T of the start's prompt: U = P_r S_r^1/2 r^1/4 and V = S_r^1/2 Q_r^T r^1/4,
    so that U V / sqrt(r) = P_r S_r Q_r^T, with U and V equally large. Past the start's own rank the
    singular values are 0 (so are those of a component the start lost, a factor quantised to 0), and
    a zero column of U with a zero row of V gets no gradient: those components start as seeded
    N(0, 0.1^2) instead. A warm start across a rank change (rate control gives neighbouring
    keyframes ranks such as 4 and 5) instead of a random one.
    """
    prompt = torch.as_tensor(start.prompt()).float()  # (m, n)
    p, s, qt = torch.linalg.svd(prompt, full_matrices=False)  # (m, k), (k,), (k, n)
    # A component's sign is the SVD routine's choice (P and Q flip together); fix it so that the
    # largest entry of each column of P is positive, and the start does not depend on the routine.
    sign = p.gather(0, p.abs().argmax(0, keepdim=True)).sign()  # (1, k)
    sign[sign == 0] = 1
    p, qt = p * sign, qt * sign.T
    # the start's components: within its rank and above float32 rounding (~1e-6 of the largest)
    kept = int((s[: min(rank, start.rank)] > 1e-4 * s[0]).sum())
    gain = s[:kept].sqrt() * rank**0.25  # (kept,)
    u = torch.zeros(prompt.shape[0], rank)
    v = torch.zeros(rank, prompt.shape[1])
    u[:, :kept] = p[:, :kept] * gain
    v[:kept] = gain[:, None] * qt[:kept]
    if rank > kept:
        u[:, kept:] = 0.1 * torch.randn(prompt.shape[0], rank - kept, generator=g)
        v[kept:] = 0.1 * torch.randn(rank - kept, prompt.shape[1], generator=g)
    return u, v


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
    if config.procedure == "reference":
        return fit_keyframe_reference(generator, task, config, perceptual, on_step)
    if config.quantiser != "minmax":
        raise ValueError(f"quantiser {config.quantiser!r} belongs to procedure 'reference'")
    z_prev, noise, targets, previous, frame_index = (
        task.z_prev,
        task.noise,
        task.targets,
        task.previous,
        task.frame_index,
    )
    device, dtype = z_prev.device, z_prev.dtype
    frames = targets.shape[0]
    first_frame = frame_index - frames + 1
    m, n = generator.prompt_shape
    u0, v0 = _initial_factors(task, m, n, config)
    u = torch.nn.Parameter(u0.to(device, torch.float32))
    v = torch.nn.Parameter(v0.to(device, torch.float32))
    optimizer = torch.optim.Adam([u, v], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=config.plateau_patience, threshold=config.min_improvement
    )
    previous_prompt = None if previous is None else previous.prompt()
    frame_losses = torch.full((frames,), float("inf"))
    frame_psnr = torch.full((frames,), -float("inf"))  # dB on [0, 1], at each frame's latest visit (target_psnr)
    best, initial = None, None
    since_best = 0
    total_iterations = config.first_iterations if previous is None else config.iterations
    window = 1 if config.frame_steps else config.max_batch
    windows = math.ceil(frames / window)
    total_steps = max(total_iterations, 1) * (windows if config.frame_steps else 1)  # frame steps: sweeps

    for step in range(total_steps):
        if best is not None and not (torch.isfinite(u).all() and torch.isfinite(v).all()):
            break  # the iterate diverged (reduced precision): keep the best one so far
        # A window of the interval, plus the worst frame of the previous pass visited again.
        start = (step % windows) * window
        batch = list(range(start, min(start + window, frames)))
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
        per_frame = config.alpha * pixel_mse(images, target, config.pixel_range)
        if config.alpha < 1:
            per_frame = per_frame + (1 - config.alpha) * perceptual(images, target)
        loss = per_frame.mean() + config.l1_weight * prompts.abs().mean()
        if config.temporal_beta and previous_prompt is not None:
            loss = loss + config.temporal_beta * ((current.prompt() - previous_prompt) ** 2).mean()

        value = loss.item()
        with torch.no_grad():
            for i, f in zip(batch, per_frame.detach().float().tolist()):
                frame_losses[i] = f
            if config.target_psnr is not None:
                mse = ((images.detach() - target) ** 2).flatten(1).mean(1).clamp(min=1e-12)  # (B,) on [0, 1]
                for i, db in zip(batch, (-10 * torch.log10(mse)).tolist()):
                    frame_psnr[i] = db
        # One window is the whole interval, and its loss is the score. With several, windows of
        # other frames must not be compared: the score is each frame's loss at its latest visit,
        # averaged, plus this iterate's regularisers (infinite until every frame has been seen).
        if windows > 1:
            regularisers = value - per_frame.detach().float().mean().item()
            value = float(frame_losses.mean()) + regularisers if torch.isfinite(frame_losses).all() else math.inf
        if initial is None:
            initial = value
        if best is None or value < best.best_loss * (1 - config.min_improvement):
            best = FitResult(
                u=quantize_codes(u.detach(), u_scale, u_zp).cpu().numpy(),
                v=quantize_codes(v.detach(), v_scale, v_zp).cpu().numpy(),
                u_scale=u_scale,
                u_zero_point=u_zp,
                v_scale=v_scale,
                v_zero_point=v_zp,
                best_loss=value,
                initial_loss=initial,
                iterations=step + 1,
                frame_losses=frame_losses.tolist(),
            )
            since_best = 0
        else:
            since_best += 1
        if on_step:
            on_step(step, value, best.best_loss)
        if config.early_stop_patience and since_best >= config.early_stop_patience:
            break
        if config.target_psnr is not None and since_best == 0 and float(frame_psnr.min()) >= config.target_psnr:
            break  # the best iterate is good enough on every frame
        if step + 1 == total_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if math.isfinite(value):
            scheduler.step(value)

    return replace(best, iterations=step + 1)


class ReferenceSchedule:
    """The reference's lr rule: every ``patience`` iterations, if no new minimum came in that
    window, halve the lr (not below ``floor``) and start a new Adam."""

    def __init__(self, lr: float, patience: int, floor: float):
        self.lr, self.patience, self.floor = lr, patience, floor
        self.countdown = patience
        self.window_min = math.inf  # the minimum when the window began

    def after_iteration(self, min_loss: float) -> bool:
        """Count one iteration whose running minimum is ``min_loss``; True when the lr was just halved."""
        self.countdown -= 1
        if self.countdown:
            return False
        halve = min_loss == self.window_min
        if halve:
            self.lr = max(self.lr * 0.5, self.floor)
        self.window_min, self.countdown = min_loss, self.patience
        return halve


def reference_visits(frames: int, first_losses: dict[int, float] | None) -> list[int]:
    """The interval offsets one reference iteration visits, one Adam step each, in order.

    All ``frames`` frames, plus (after the first iteration, ``first_losses`` given) the previous
    iteration's worst frame twice more, sorted in. A scene's first keyframe (one frame) is
    visited once an iteration: the reference repeats no worst frame there.
    """
    visits = list(range(frames))
    if frames > 1 and first_losses:
        worst = max(first_losses, key=first_losses.get)  # the first of equal losses, as max() picks
        visits = sorted(visits + [worst, worst])
    return visits


def fit_keyframe_reference(
    generator: torch.nn.Module,
    task: FitTask,
    config: FitConfig,
    perceptual: PerceptualLoss,
    on_step=None,
) -> FitResult:
    """The reference implementation's inversion, rule by rule (inversion.py; FitConfig's docstring).

    One iteration visits the frames one Adam step each: the keyframe alone for a scene's first
    keyframe; the interval's K frames in order for a later one, and from the second iteration
    on the previous iteration's worst frame twice more (sorted in), K + 2 steps. The iteration's
    loss is the mean over its frames of each frame's first loss; a new minimum keeps the factors
    of the iteration's last step. After ``plateau_patience`` iterations (``first_plateau_patience``
    for a first keyframe) without a new minimum, the lr halves (not below ``lr_floor``) and a new
    Adam starts, forgetting its moments.
    """
    z_prev, noise, targets, previous = task.z_prev, task.noise, task.targets, task.previous
    dtype = z_prev.dtype
    frames = targets.shape[0]
    first_frame = task.frame_index - frames + 1
    m, n = generator.prompt_shape
    u0, v0 = _initial_factors(task, m, n, config)
    u = torch.nn.Parameter(u0.to(z_prev.device, torch.float32))
    v = torch.nn.Parameter(v0.to(z_prev.device, torch.float32))
    quantiser = RunningQuantiser if config.quantiser == "running" else MinMaxQuantiser
    quant_u, quant_v = quantiser(), quantiser()
    first_keyframe = previous is None
    patience = (
        config.first_plateau_patience if first_keyframe and config.first_plateau_patience else config.plateau_patience
    )
    schedule = ReferenceSchedule(config.lr, patience, config.lr_floor)
    optimizer = torch.optim.Adam([u, v], lr=schedule.lr)
    total_iterations = config.first_iterations if first_keyframe else config.iterations
    best, initial, min_loss, first_losses = None, None, math.inf, None

    for iteration in range(max(total_iterations, 1)):
        visits = reference_visits(frames, first_losses)
        first_losses = {}
        for offset in visits:
            uq, codes_u, u_scale, u_zp = quant_u(u)
            vq, codes_v, v_scale, v_zp = quant_v(v)
            current = Factors(task.frame_index, uq, vq)
            prompt = (
                current.prompt() if first_keyframe else interpolate(previous, current, first_frame + offset)
            )  # (m, n)
            _, image = generator(z_prev, noise, prompt[None].to(dtype))  # (1, 3, H, W)
            target = targets[offset : offset + 1]
            per_frame = config.alpha * pixel_mse(image.float(), target, config.pixel_range)
            if config.alpha < 1:
                per_frame = per_frame + (1 - config.alpha) * perceptual(image.float(), target)
            loss = per_frame.mean() + config.l1_weight * prompt.abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            first_losses.setdefault(offset, loss.item())
            last_step = (codes_u, codes_v, u_scale, u_zp, v_scale, v_zp)  # what the reference saves on a new minimum
        mean_loss = float(np.mean(list(first_losses.values())))
        if initial is None:
            initial = mean_loss
        if mean_loss < min_loss:
            min_loss = mean_loss
            codes_u, codes_v, u_scale, u_zp, v_scale, v_zp = last_step
            best = FitResult(
                u=codes_u.cpu().numpy(),
                v=codes_v.cpu().numpy(),
                u_scale=u_scale,
                u_zero_point=u_zp,
                v_scale=v_scale,
                v_zero_point=v_zp,
                best_loss=mean_loss,
                initial_loss=initial,
                iterations=iteration + 1,
                frame_losses=[first_losses[i] for i in range(frames)],
            )
        if on_step:
            on_step(iteration, mean_loss, min_loss)
        if schedule.after_iteration(min_loss):
            optimizer = torch.optim.Adam([u, v], lr=schedule.lr)  # a new Adam: its moments start again
    return replace(best, iterations=iteration + 1)
