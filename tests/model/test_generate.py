"""promptus_codec.generate: the step math, and the Generator on the tiny model."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from promptus_codec.container.records import GenerationConstants, PredictionType  # noqa: E402
from promptus_codec.generate import (  # noqa: E402
    Generator,
    initial_noise_tensor,
    noisy_latent,
    x0_from_prediction,
)

CONSTANTS = GenerationConstants()


def _inputs(h=8, w=8, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_prev = torch.randn(1, 4, h, w, generator=g)  # (1, 4, h, w)
    noise = initial_noise_tensor(CONSTANTS, (4, h, w))  # (1, 4, h, w)
    prompts = torch.randn(batch, 77, 1024, generator=g)  # (B, 77, 1024)
    return z_prev, noise, prompts


# ---------------------------------------------------------------------------
# The step math alone
# ---------------------------------------------------------------------------


def _euler_ancestral_x0(noisy, model, alpha_cumprod, prediction):
    """sgm's EulerAncestralSampler, one step from sigma(t=999) to 0 (eta = 1), written out."""
    sigma = math.sqrt((1 - alpha_cumprod) / alpha_cumprod)
    c_in = 1 / math.sqrt(sigma**2 + 1)
    if prediction == "eps":  # EpsScaling
        c_skip, c_out = 1.0, -sigma
    else:  # VScaling
        c_skip, c_out = 1 / (sigma**2 + 1), -sigma / math.sqrt(sigma**2 + 1)
    x = noisy * math.sqrt(1 + sigma**2)  # the sampler's start latent
    denoised = c_skip * x + c_out * model(c_in * x)
    sigma_to = 0.0  # get_ancestral_step(sigma, 0, eta=1)
    sigma_up = min(sigma_to, math.sqrt(sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    d = (x - denoised) / sigma  # to_d
    return x + d * (sigma_down - sigma) + torch.randn_like(x) * sigma_up


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_equals_euler_ancestral_step(prediction):
    a = CONSTANTS.alpha_cumprod
    sigma = math.sqrt((1 - a) / a)
    assert sigma == pytest.approx(14.6146, abs=1e-4)
    assert 1 / math.sqrt(sigma**2 + 1) == pytest.approx(0.0683, abs=1e-4)

    g = torch.Generator().manual_seed(1)
    noisy = 0.05 * torch.randn(1, 4, 16, 16, generator=g) + 0.95 * torch.randn(1, 4, 16, 16, generator=g)
    weight = torch.randn(4, 4, 3, 3, generator=g) * 0.3

    def model(x):  # any nonlinear function of the UNet input; (B, 4, h, w) -> (B, 4, h, w)
        return torch.tanh(torch.nn.functional.conv2d(x, weight.to(x.dtype), padding=1)) + 0.1 * x

    kind = PredictionType.EPSILON if prediction == "eps" else PredictionType.V_PREDICTION
    ours = x0_from_prediction(noisy, model(noisy), GenerationConstants(prediction_type=kind))  # float32
    sgm = _euler_ancestral_x0(noisy.double(), model, a, prediction)  # float64
    assert ours.dtype == torch.float32
    # |x0| reaches ~40 and sgm's path rescales by sqrt(1 + sigma^2) = 14.6: float32 rounding.
    torch.testing.assert_close(ours.double(), sgm, rtol=1e-5, atol=1e-5)
    assert (ours.double() - sgm).abs().max() < 1e-4 * sgm.abs().max()


def test_sample_prediction_is_the_output():
    out = torch.randn(2, 4, 8, 8)
    constants = GenerationConstants(prediction_type=PredictionType.SAMPLE)
    assert torch.equal(x0_from_prediction(torch.randn(1, 4, 8, 8), out, constants), out)


def test_noisy_latent_matches_reference_bit_for_bit():
    z_prev = np.random.RandomState(3).randn(1, 4, 8, 8).astype(np.float32)
    n0 = np.random.RandomState(88).randn(1, 4, 8, 8).astype(np.float32)
    reference = 0.05 * z_prev + 0.95 * n0  # the reference decoder's expression
    ours = noisy_latent(torch.from_numpy(z_prev), torch.from_numpy(n0), CONSTANTS)
    assert ours.dtype == torch.float32
    assert np.array_equal(ours.numpy(), reference)


def test_initial_noise_tensor():
    noise = initial_noise_tensor(CONSTANTS, (4, 8, 12), dtype=torch.float32)
    assert noise.shape == (1, 4, 8, 12) and noise.dtype == torch.float32
    expected = np.random.RandomState(88).randn(1, 4, 8, 12).astype(np.float32)
    assert np.array_equal(noise.numpy(), expected)


# ---------------------------------------------------------------------------
# Generator on the tiny model
# ---------------------------------------------------------------------------


def test_shapes_and_range(tiny_generator):
    z_prev, noise, prompts = _inputs(8, 12, batch=2)
    with torch.no_grad():
        latents, images = tiny_generator(z_prev, noise, prompts)
    assert latents.shape == (2, 4, 8, 12) and latents.dtype == torch.float32
    assert images.shape == (2, 3, 64, 96) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert tiny_generator.prompt_shape == (77, 1024)


def test_deterministic(tiny_generator):
    z_prev, noise, prompts = _inputs()
    with torch.no_grad():
        first = tiny_generator(z_prev, noise, prompts)
        second = tiny_generator(z_prev, noise, prompts)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_batch_equals_frame_by_frame(tiny_model, tiny_generator):
    z_prev, noise, prompts = _inputs(batch=5)
    noisy = noisy_latent(z_prev, noise, CONSTANTS)
    # Batched and single GEMMs round differently (~1e-5 on the denoiser output); x0 divides
    # by sqrt(alpha_cumprod) = 0.068, so it may differ ~15x more.
    x0_atol = 1e-5 * math.sqrt(1 - CONSTANTS.alpha_cumprod) / math.sqrt(CONSTANTS.alpha_cumprod)
    with torch.no_grad():
        outs = tiny_model.denoise(noisy.expand(5, -1, -1, -1), prompts, 999)
        latents, images = tiny_generator(z_prev, noise, prompts)
        for i in range(len(prompts)):
            one_out = tiny_model.denoise(noisy, prompts[i : i + 1], 999)
            one_latent, one_image = tiny_generator(z_prev, noise, prompts[i : i + 1])
            torch.testing.assert_close(one_out, outs[i : i + 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(one_latent, latents[i : i + 1], rtol=0, atol=x0_atol)
            torch.testing.assert_close(one_image, images[i : i + 1], rtol=0, atol=1e-4)


def test_batch_shares_one_noisy_latent(tiny_model):
    seen = []

    class Spy:  # records what the denoiser is given
        spec, device, dtype = tiny_model.spec, tiny_model.device, tiny_model.dtype

        def denoise(self, noisy, prompts, timestep):
            seen.append((noisy.stride(0), timestep))
            return tiny_model.denoise(noisy, prompts, timestep)

        decode_latent = staticmethod(tiny_model.decode_latent)

    with torch.no_grad():
        Generator(Spy()).latents(*_inputs(batch=4))
    assert seen == [(0, 999)]  # expanded, not copied; the stream's timestep


def test_last_latent_is_the_next_z_prev(tiny_generator):
    z_prev, noise, prompts = _inputs(batch=3)
    with torch.no_grad():
        latents = tiny_generator.latents(z_prev, noise, prompts)
        alone = tiny_generator.latents(z_prev, noise, prompts[-1:])
    last = Generator.last_latent(latents)
    assert last.shape == (1, 4, 8, 8)
    torch.testing.assert_close(last, alone, rtol=0, atol=2e-4)  # see the test above


def test_different_prompts_give_different_images(tiny_generator):
    z_prev, noise, prompts = _inputs(batch=2)
    with torch.no_grad():
        _, images = tiny_generator(z_prev, noise, prompts)
    assert (images[0] - images[1]).abs().mean() > 0.03
    assert images.std() > 0.05  # not a flat frame


def test_gradients_reach_the_prompt(tiny_generator):
    z_prev, noise, prompts = _inputs(batch=2)
    prompts.requires_grad_(True)
    target = torch.full((2, 3, 64, 64), 0.5)
    _, images = tiny_generator(z_prev, noise, prompts)
    ((images - target) ** 2).mean().backward()
    grad = prompts.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert (grad.abs().flatten(1).amax(1) > 0).all()  # every frame's prompt gets a gradient


def test_check_inputs_names_the_argument(tiny_generator):
    z_prev, noise, prompts = _inputs()
    with pytest.raises(ValueError, match="z_prev"):
        tiny_generator(z_prev.expand(2, -1, -1, -1), noise, prompts)
    with pytest.raises(ValueError, match="noise"):
        tiny_generator(z_prev, noise[..., :4], prompts)
    with pytest.raises(ValueError, match="prompts"):
        tiny_generator(z_prev, noise, prompts[:, :, :512])
