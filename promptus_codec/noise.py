"""The shared noise N0 (format_spec.md §3.4.1). Pure numpy, so torch-free decoders use it."""

from __future__ import annotations

import numpy as np

from promptus_codec.container.records import NoiseGenerator
from promptus_codec.errors import ForbiddenValueError


def initial_noise(seed: int, shape: tuple[int, ...], generator: int = NoiseGenerator.NUMPY_MT19937_RANDN) -> np.ndarray:
    """N0 for a stream: ``RandomState(seed).randn(1, *shape)`` as float64, cast to float32.

    shape is the header's latent shape (C, H, W); the result is (1, C, H, W) float32.
    """
    if generator != NoiseGenerator.NUMPY_MT19937_RANDN:
        raise ForbiddenValueError(f"noise_generator {generator} is not defined by this version")
    return np.random.RandomState(seed).randn(1, *shape).astype(np.float32)
