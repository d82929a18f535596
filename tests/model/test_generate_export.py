"""GenerationStep exports to ONNX (dynamic batch and size) and ONNX Runtime agrees with torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from promptus_codec.generate import initial_noise_tensor  # noqa: E402
from tolerances import generation_atols  # noqa: E402  (tests/ is on sys.path)


def test_onnx_export_matches_torch(tiny_generator, tmp_path):
    constants = tiny_generator.constants
    g = torch.Generator().manual_seed(0)
    z_prev, noise = torch.randn(1, 4, 8, 8, generator=g), initial_noise_tensor(constants, (4, 8, 8))
    example = (z_prev, noise, torch.randn(2, 77, 1024, generator=g))
    batch = torch.export.Dim("batch", min=1, max=64)
    h, w = torch.export.Dim("h", min=1, max=128), torch.export.Dim("w", min=1, max=128)
    spatial = {2: 2 * h, 3: 2 * w}  # even latent sides: the tiny UNet downsamples once
    path = tmp_path / "generator.onnx"
    torch.onnx.export(
        tiny_generator, example, str(path), dynamo=True,
        input_names=["z_prev", "noise", "prompts"], output_names=["latents", "images"],
        dynamic_shapes={"z_prev": spatial, "noise": spatial, "prompts": {0: batch}},
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width, frames in [(8, 8, 2), (16, 24, 3)]:
        z_prev = torch.randn(1, 4, height, width, generator=g)
        noise = initial_noise_tensor(constants, (4, height, width))
        prompts = torch.randn(frames, 77, 1024, generator=g)
        with torch.no_grad():
            latents, images = tiny_generator(z_prev, noise, prompts)
        feeds = {"z_prev": z_prev.numpy(), "noise": noise.numpy(), "prompts": prompts.numpy()}
        onnx_latents, onnx_images = session.run(None, feeds)
        assert onnx_images.shape == (frames, 3, 8 * height, 8 * width)
        # ONNX Runtime (MLAS) and torch are two float32 implementations: tolerances.generation_atols
        latent_atol, image_atol = generation_atols(tiny_generator.model, constants, z_prev, noise, prompts)
        np.testing.assert_allclose(onnx_latents, latents.numpy(), rtol=0, atol=latent_atol)
        with torch.no_grad():  # the decoders compared on the same latents: ONNX Runtime's
            torch_images = tiny_generator.model.decode_latent(torch.from_numpy(onnx_latents)).numpy()
        np.testing.assert_allclose(onnx_images, torch_images, rtol=0, atol=image_atol)
