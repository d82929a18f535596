"""Float tolerances of the test suite, each derived from float32 arithmetic.

u = 2**-24 is float32's unit roundoff (EPS32 = 2**-23 is the spacing of float32 at 1.0): an
IEEE float32 operation returns the exact result times (1 + d), |d| <= u.

Two kinds of bound are used; never a number tuned on one CPU:

* **rigorous**, for short computations whose steps the test knows (the prompt math): a float32
  sum or dot product whose every term passes through at most n roundings (multiply, adds,
  the final divide) is off by at most gamma(n) = n u / (1 - n u) times the sum of the terms'
  absolute values, in any summation order, FMA or not (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., §3.1 and Lemma 3.1);
* **probabilistic**, for the networks, where the worst case n u is thousands of times what
  happens: rounding errors of n accumulated operations grow like lambda sqrt(n) u, not n u
  (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019). n is the network's accumulation length
  (:func:`accumulation_length`); the scale is the largest magnitude of the output, which the
  networks keep of the order of their normalised activations. Two float32 implementations of
  one network (batched and unbatched GEMMs, another BLAS or blocking, AVX-512 or AMX tiles,
  ONNX Runtime's MLAS against torch's MKL/oneDNN) each carry such an error, so they may differ
  by twice it: :func:`network_atol`.

What the probabilistic bound does not cover, on purpose: computing float32 layers in bfloat16 or
TF32 (2**-8 or 2**-11 relative, 65,536 or 8,192 times u). torch's default float32 matmul
precision ("highest") never does; a backend that did would be a precision change to report, not
rounding noise to tolerate.
"""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23, the spacing of float32 numbers at 1.0
U32 = EPS32 / 2  # 2**-24, unit roundoff: the largest relative error of one rounding

# lambda of the probabilistic bound. One rounding error uniform in [-u, u] has standard
# deviation u / sqrt(3); n independent ones sum to sigma = sqrt(n / 3) u, so lambda sqrt(n) u
# with lambda = 3 is 3 sqrt(3) = 5.2 sigma, exceeded by a normal variable with probability
# 2e-7: about 1 in 1,000 for the largest of the few thousand values a test compares.
LAMBDA = 3.0


def gamma(n: int) -> float:
    """Higham's gamma_n for float32: the relative error bound after n roundings."""
    assert n * U32 < 1
    return n * U32 / (1 - n * U32)


U64 = 2.0**-53  # float64's unit roundoff, for the Python-float bookkeeping (bitrates, PSNR)


def gamma64(n: int) -> float:
    """gamma_n for float64: two values computed with n1 and n2 roundings differ by gamma64(n1 + n2)."""
    return n * U64 / (1 - n * U64)


def accumulation_length(module) -> int:
    """Sum of the reduction lengths of ``module``'s convolutions and linear layers.

    A conv output element sums in_channels / groups x kernel area products, a linear one
    in_features; along a network the roundings of every layer add up. (Normalisation and the
    attention products add shorter reductions: within the factor lambda.)
    """
    import torch

    total = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            total += layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        elif isinstance(layer, torch.nn.Linear):
            total += layer.in_features
    return total


def network_atol(scale: float, accumulation: int) -> float:
    """How far two float32 implementations of one network may differ, outputs of size ``scale``."""
    return 2 * LAMBDA * math.sqrt(accumulation) * U32 * scale


def x0_atol(denoiser_atol: float, noisy_scale: float, out_scale: float, alpha_cumprod: float) -> float:
    """The tolerance on x0 = (noisy - sqrt(1 - a) out) / sqrt(a) (spec §9.3, epsilon prediction).

    A difference in the denoiser output ``out`` is multiplied by sigma = sqrt(1 - a) / sqrt(a)
    (14.6 for SD's a(999)). The formula's own roundings (the two float32 constants, multiply,
    subtract, divide: 5) count against its terms, |noisy| + sqrt(1 - a) |out|, over sqrt(a):
    not against |x0|, which is often far smaller than the terms it is the difference of.
    """
    sqrt_a, sqrt_1ma = math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod)
    return sqrt_1ma / sqrt_a * denoiser_atol + gamma(5) * (noisy_scale + sqrt_1ma * out_scale) / sqrt_a


def levels_after_rounding(float_atol: float) -> int:
    """Max difference in 8-bit levels of round(255 v) for two v that differ by ``float_atol``.

    |round(a) - round(b)| <= ceil(|a - b|): a difference below one level (1/255 in v) can still
    straddle a half-level boundary and flip one sample by 1 level, never by more.
    """
    return math.ceil(255 * float_atol)


def generation_atols(model, constants, z_prev, noise, prompts) -> tuple[float, float]:
    """(x0, pictures) tolerances between two float32 implementations of one generation step.

    Runs the step once in torch to learn the sizes involved: the denoiser output's (for
    :func:`network_atol` over the UNet, scaled by :func:`x0_atol`) and the pictures' (over the
    latent decoder). The pictures' tolerance holds for pictures decoded from the *same* latents:
    compare one implementation's pictures with the other's decoder run on its latents.
    ``model`` is a built-in model (``unet`` and ``taesd`` attributes).
    """
    import torch

    from promptus_codec.generate import noisy_latent, x0_from_prediction

    z_prev, noise, prompts = (torch.as_tensor(a) for a in (z_prev, noise, prompts))
    with torch.no_grad():
        noisy = noisy_latent(z_prev, noise, constants)
        outs = model.denoise(noisy.expand(len(prompts), -1, -1, -1), prompts, constants.timestep)
        images = model.decode_latent(x0_from_prediction(noisy, outs, constants))
    denoiser = network_atol(outs.abs().max().item(), accumulation_length(model.unet))
    latents = x0_atol(denoiser, noisy.abs().max().item(), outs.abs().max().item(), constants.alpha_cumprod)
    return latents, network_atol(images.abs().max().item(), accumulation_length(model.taesd.decoder))


def dot_bound(u, v, roundings: int) -> np.ndarray:
    """Elementwise bound on the rounding error of a float32 u @ v: gamma(roundings) |u| @ |v|.

    ``roundings`` is how many roundings a term meets on its way: its multiply and the adds
    after it (r for a rank-r product, in any order), plus whatever follows (a divide...).
    """
    return gamma(roundings) * (np.abs(np.asarray(u, np.float64)) @ np.abs(np.asarray(v, np.float64)))
