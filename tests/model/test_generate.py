"""promptus_codec.generate: the step math, and the GenerationStep on the tiny model."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from promptus_codec.container.records import GenerationConstants, PredictionType  # noqa: E402
from promptus_codec.generate import (  # noqa: E402
    GenerationStep,
    initial_noise_tensor,
    noisy_latent,
    x0_from_prediction,
)
from tolerances import accumulation_length, gamma, network_atol, x0_atol  # noqa: E402  (tests/ is on sys.path)

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


def test_alpha_cumprod_is_sgms_float64_schedule():
    """sgm's make_beta_schedule("linear", ...) and LegacyDDPMDiscretization, written out."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas.numpy(), axis=0)  # float64, as sgm
    assert CONSTANTS.alpha_cumprod == float(np.float32(alphas_cumprod[999]))
    assert np.float32(CONSTANTS.alpha_cumprod).view(np.uint32) == 0x3B98B3BD  # format_spec.md §3.4
    # diffusers' scaled_linear schedule, the same in float32, lands 7 float32 ulps lower
    betas32 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    diffusers = torch.cumprod(1.0 - betas32, dim=0)[999].numpy()
    assert int(np.float32(CONSTANTS.alpha_cumprod).view(np.int32)) - int(diffusers.view(np.int32)) == 7


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_equals_euler_ancestral_step(prediction):
    a = CONSTANTS.alpha_cumprod
    sigma = math.sqrt((1 - a) / a)
    # the spec's four printed digits (§9.3): half a unit in the last printed place
    assert sigma == pytest.approx(14.6146, abs=0.5e-4)
    assert 1 / math.sqrt(sigma**2 + 1) == pytest.approx(0.0683, abs=0.5e-4)

    g = torch.Generator().manual_seed(1)
    noisy = 0.05 * torch.randn(1, 4, 16, 16, generator=g) + 0.95 * torch.randn(1, 4, 16, 16, generator=g)
    weight = torch.randn(4, 4, 3, 3, generator=g) * 0.3

    def model(x):  # any nonlinear function of the UNet input; (B, 4, h, w) -> (B, 4, h, w)
        return torch.tanh(torch.nn.functional.conv2d(x, weight.to(x.dtype), padding=1)) + 0.1 * x

    kind = PredictionType.EPSILON if prediction == "eps" else PredictionType.V_PREDICTION
    ours = x0_from_prediction(noisy, model(noisy), GenerationConstants(prediction_type=kind))  # float32
    sgm = _euler_ancestral_x0(noisy.double(), model, a, prediction)  # float64
    assert ours.dtype == torch.float32
    # float32 x0 against sgm's float64 path (whose own rounding, 2**29 times smaller, is ignored).
    # The model output in float32: its 36-term conv is off by gamma(36) times the sum of
    # |weight| |x| (tanh' <= 1 passes that on), then tanh (1 ulp), 0.1 x and the add: gamma(4)
    # of |out| <= 1 + 0.1 |x|. The x0 formula scales that and adds its own roundings.
    terms = torch.nn.functional.conv2d(noisy.abs().double(), weight.abs().double(), padding=1).max().item()
    noisy_scale = noisy.abs().max().item()
    out_scale = 1 + 0.1 * noisy_scale
    out_atol = gamma(36) * terms + gamma(4) * out_scale
    if prediction == "eps":
        atol = x0_atol(out_atol, noisy_scale, out_scale, a)
    else:  # x0 = sqrt(a) x - sqrt(1 - a) out: the same roundings, no division by sqrt(a)
        atol = math.sqrt(1 - a) * out_atol + gamma(5) * (math.sqrt(a) * noisy_scale + math.sqrt(1 - a) * out_scale)
    torch.testing.assert_close(ours.double(), sgm, rtol=0, atol=atol)


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
# GenerationStep on the tiny model
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


def batch_atols(tiny_model, noisy, outs) -> tuple[float, float]:
    """Tolerances (denoiser output, x0) between a batched and a frame-by-frame run.

    Batched and single GEMMs/convolutions may sum in different orders (other blocking, AVX-512
    or AMX kernels): tolerances.network_atol over the UNet's accumulation length, at the size of
    the batched outputs; x0 scales the denoiser's difference by sigma = 14.6 (tolerances.x0_atol).
    """
    denoiser = network_atol(outs.abs().max().item(), accumulation_length(tiny_model.unet))
    return denoiser, x0_atol(denoiser, noisy.abs().max().item(), outs.abs().max().item(), CONSTANTS.alpha_cumprod)


def test_batch_equals_frame_by_frame(tiny_model, tiny_generator):
    z_prev, noise, prompts = _inputs(batch=5)
    noisy = noisy_latent(z_prev, noise, CONSTANTS)
    with torch.no_grad():
        outs = tiny_model.denoise(noisy.expand(5, -1, -1, -1), prompts, 999)
        latents, images = tiny_generator(z_prev, noise, prompts)
        out_atol, latent_atol = batch_atols(tiny_model, noisy, outs)
        # the decoder is compared on the same latents, so only its own rounding counts
        image_atol = network_atol(images.abs().max().item(), accumulation_length(tiny_model.taesd.decoder))
        for i in range(len(prompts)):
            one_out = tiny_model.denoise(noisy, prompts[i : i + 1], 999)
            one_latent = tiny_generator.latents(z_prev, noise, prompts[i : i + 1])
            one_image = tiny_model.decode_latent(latents[i : i + 1])  # the decoder alone, unbatched
            torch.testing.assert_close(one_out, outs[i : i + 1], rtol=0, atol=out_atol)
            torch.testing.assert_close(one_latent, latents[i : i + 1], rtol=0, atol=latent_atol)
            torch.testing.assert_close(one_image, images[i : i + 1], rtol=0, atol=image_atol)


def test_batch_shares_one_noisy_latent(tiny_model):
    seen = []

    class Spy:  # records what the denoiser is given
        spec, device, dtype = tiny_model.spec, tiny_model.device, tiny_model.dtype

        def denoise(self, noisy, prompts, timestep):
            seen.append((noisy.stride(0), timestep))
            return tiny_model.denoise(noisy, prompts, timestep)

        decode_latent = staticmethod(tiny_model.decode_latent)

    with torch.no_grad():
        GenerationStep(Spy()).latents(*_inputs(batch=4))
    assert seen == [(0, 999)]  # expanded, not copied; the stream's timestep


def test_last_latent_is_the_next_z_prev(tiny_model, tiny_generator):
    z_prev, noise, prompts = _inputs(batch=3)
    with torch.no_grad():
        latents = tiny_generator.latents(z_prev, noise, prompts)
        alone = tiny_generator.latents(z_prev, noise, prompts[-1:])
        noisy = noisy_latent(z_prev, noise, CONSTANTS)
        _, atol = batch_atols(tiny_model, noisy, tiny_model.denoise(noisy.expand(3, -1, -1, -1), prompts, 999))
    last = GenerationStep.last_latent(latents)
    assert last.shape == (1, 4, 8, 8)
    torch.testing.assert_close(last, alone, rtol=0, atol=atol)  # batched against alone: see batch_atols


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
