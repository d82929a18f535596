"""What decides an encode's bytes, as plain dataclasses: EncodeOptions, FitConfig and the presets.

Torch-free, so that the command line can show every default from here (``show_default``)
without importing the encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction

from promptus_codec import __version__
from promptus_codec.container.records import LatentFormat
from promptus_codec.encoder.scenes import DEFAULT_DETECTOR
from promptus_codec.errors import UsageError

# torch threads per encode (chunk) unless told: the thread count changes a fit's float results, so
# `promptus encode` and `promptus compare` share one default and write the same bytes.
DEFAULT_THREADS = 1

INITS = (
    "auto",
    "random",
    "uniform",
    "warm",
    "amortized",
)  # FitConfig.init; auto = warm, or amortized with --initializer (README "Fitting")
PROCEDURES = ("batched", "reference")  # FitConfig.procedure
FIT_MODES = (
    "crop",
    "pad",
    "scale",
)  # EncodeOptions.fit_mode, as media.geometry.FITS maps them; crop is the reference's
PERCEPTUAL_LOSSES = ("auto", "lpips", "vgg19", "none")  # --perceptual; EncodeOptions also takes lpips-random and
# vgg19-random (tests only: untrained backbones)


@dataclass(frozen=True)
class FitConfig:
    """How to fit. Presets are in PRESETS.

    ``procedure`` "batched" is ours: one Adam step an iteration over the interval's frames (plus
    the worst frame again), ReduceLROnPlateau, early stopping. "reference" is the reference
    implementation's inversion.py step for step: one Adam step per frame (the interval's K
    frames, then the worst frame twice), a new Adam at half the lr after ``plateau_patience``
    iterations without a new best (floor ``lr_floor``), a running-range uint8 quantiser, and
    the best iterate judged by the mean of each frame's first loss in the iteration.
    """

    procedure: str = "batched"  # batched | reference (see above)
    first_iterations: int = 300  # a scene's first keyframe starts from nothing
    iterations: int = 100  # later keyframes start near the previous one
    lr: float = 0.1  # Adam step; the reference's value
    plateau_patience: int = 20  # iterations without a new best before the lr is halved
    first_plateau_patience: int | None = None  # the same for a scene's first keyframe; None = plateau_patience
    lr_floor: float = 0.0  # the lr is never halved below this (the reference: 0.001)
    early_stop_patience: int = 60  # iterations without a new best before fitting stops (0 = never)
    target_psnr: float | None = None  # stop at a new best whose every frame reaches this PSNR (RGB, dB, before
    # 8-bit rounding); None = run the budget (batched procedure only)
    min_improvement: float = 1e-4  # relative loss decrease that counts as a new best
    alpha: float = 0.8  # weight of MSE; 1 - alpha goes to the perceptual loss
    l1_weight: float = 0.0  # weight of mean|c|, the reference's L1 term on the prompt (0.1 there, against an MSE
    # on [-1, 1]); off in our presets: on mini it held the fitted frame ~3 dB down (README "Fitting")
    pixel_range: str = "unit"  # MSE on images in [0, 1] (unit) or in [-1, 1] (signed: the reference; 4x the unit MSE)
    quantiser: str = (
        "minmax"  # int8 over the current tensor's range (minmax) | uint8 over a running range (running: the reference)
    )
    scene_latent: str = "mean"  # scene latents: the VAE posterior's mean | a seeded sample from it (the reference)
    temporal_beta: float = 0.0  # paper eq. 5: pull c_k toward the previous keyframe's c
    init: str = "auto"  # start: random (seeded normal) | uniform (seeded U[0, 1): the reference) | warm (previous
    # keyframe; a scene's first from random) | amortized (warm, a scene's first from the prompt encoder) | auto
    # (warm; amortized with --initializer: mini's prompt encoder is not yet a better start, README "Fitting")
    max_batch: int = 16  # frames per forward pass; longer intervals are visited in windows
    frame_steps: bool = False  # one Adam step per frame of the interval (each beside the worst frame), an
    # iteration then being one sweep over the interval; False: one step per window (README "Fitting")
    seed: int = 0  # initial factors come from a generator seeded with (seed, frame index)

    def to_json(self) -> dict:
        return asdict(self)


PRESETS = {
    # The reference implementation's procedure, rule by rule (inversion.py; README "Fitting presets").
    "reference": FitConfig(
        procedure="reference",
        first_iterations=10_000,
        iterations=1_500,
        lr=0.1,
        plateau_patience=20,
        first_plateau_patience=300,
        lr_floor=0.001,
        early_stop_patience=0,
        min_improvement=0.0,
        alpha=0.8,
        l1_weight=0.1,
        pixel_range="signed",
        quantiser="running",
        scene_latent="sample",
        init="uniform",
        max_batch=1,
    ),
    # The reference's iteration budget with our batched procedure: 10,000 / 1,500 iterations.
    "paper": FitConfig(first_iterations=10_000, iterations=1_500, plateau_patience=100, early_stop_patience=0),
    "slow": FitConfig(first_iterations=2_000, iterations=500, plateau_patience=50, early_stop_patience=200),
    # Per-frame steps at the UNet passes of 100 batched iterations (55 sweeps of K steps, 2 passes
    # each): better on sky at every budget measured (README, "Per-frame against batched steps").
    "fast": FitConfig(
        first_iterations=300, iterations=55, frame_steps=True, plateau_patience=20, early_stop_patience=0
    ),
    "draft": FitConfig(first_iterations=40, iterations=15, plateau_patience=8, early_stop_patience=0),
}


@dataclass(frozen=True)
class EncodeOptions:
    """Everything that decides the bytes of the output. Recorded in the EncoderSettings record."""

    target_kbps: float | None = None  # total bitrate; None = --rank and --interval decide
    rank: int | None = None  # force every keyframe's rank
    interval: int | None = None  # force the keyframe interval K
    min_rank: int | None = None  # rate control keeps at least this rank while shrinking K; None = the model's
    max_interval: int | None = None  # ... but stops at this K once the rank reaches the model's least_rank; 0 = no
    #                                  limit, None = the model's
    preset: str = "fast"  # fitting procedure and effort, see PRESETS
    size: tuple[int, int] | None = None  # coded (W, H); None = short side 512, multiples of 64
    fit_mode: str = "crop"  # crop (the reference) | pad | scale
    fps: Fraction | None = None  # override the source frame rate
    refresh_s: float = 10.0  # start a scene at least this often (seconds); 0 = only at cuts
    scene_detector: str = DEFAULT_DETECTOR  # content | adaptive (PySceneDetect, pixels) | latent (paper A.1)
    cut_threshold: float | None = None  # the detector's threshold; None = its default (encoder/scenes.py)
    latent_format: LatentFormat = LatentFormat.FLOAT16  # storage of scene latents
    perceptual: str = "lpips"  # lpips | vgg19 (the reference's) | none | lpips-random, vgg19-random (tests only)
    fit_overrides: tuple[tuple[str, object], ...] = ()  # FitConfig fields changed from the preset
    initializer_file: str | None = None  # a prompt encoder from scripts/train_initializer.py for --init amortized;
    #                                      None = the model's own. The settings record its fingerprint, not the path
    verify_record: bool = True  # a ReconThumbnail after each keyframe, so decode --verify can measure drift

    def fit_config(self) -> FitConfig:
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[self.preset], **dict(self.fit_overrides))

    def settings(self, model_name: str) -> dict:
        """The JSON object stored in the EncoderSettings record."""
        d = asdict(self)
        del d["initializer_file"]  # where it lies is not what it is: the Encoder records its fingerprint
        d.update(
            fps=None if self.fps is None else f"{self.fps.numerator}/{self.fps.denominator}",
            latent_format=self.latent_format.name.lower(),
            size=None if self.size is None else list(self.size),
            fit_overrides=dict(self.fit_overrides),
            fit=self.fit_config().to_json(),
            model=model_name,
            encoder=f"promptus-codec {__version__}",  # another version may fit other bytes: --resume refuses it
        )
        return d
