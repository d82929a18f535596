"""The encode driver: video in, .prx out, at a target bitrate.

    pass 1  video --media--> coded frames --CutDetector (pixels, or latents)--> scenes
            scene starts --model.encode_image--> scene latents
            scenes + shapes --ratecontrol.plan_rate--> interval K, rank per keyframe
    pass 2  for each keyframe k (frames streamed again, one interval held at a time):
              fit U, V through generate.Generator (encoder/fit.py)
              write the Keyframe record  ──>  OUT.prx.partial
              decode it exactly as a decoder will (decoder.driver.decode_interval)
              ├─> ReconThumbnail record (luma fingerprint of the keyframe, for decode --verify)
              ├─> Quality record (PSNR of the encoder's own reconstruction)
              └─> z_prev for the next interval (closed loop)
            Padding, SeekIndex, End; rename OUT.prx.partial -> OUT.prx

Everything the encoder does is deterministic (seeded per keyframe), so ``resume`` can
rebuild its state from the records already written and finish with the very bytes an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from promptus_codec.container.codec import recon_thumbnail_payload_size
from promptus_codec.container.order import DecodeOrder
from promptus_codec.container.reader import PrxReader
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    FileHeader,
    KeyframeRecord,
    LatentFormat,
    PaddingRecord,
    QualityRecord,
    QuantScheme,
    ReconThumbnailRecord,
    SceneRecord,
    SourceGeometry,
)
from promptus_codec.container.writer import PrxWriter
from promptus_codec.decoder.driver import Interval, decode_interval, dequantized_factors
from promptus_codec.decoder.torch_runtime import TorchRuntime
from promptus_codec.encoder.fit import PRESETS, FitConfig, PerceptualLoss, fit_keyframe
from promptus_codec.encoder.scenes import DEFAULT_DETECTOR, CutDetector, SceneStart, scene_lengths, scene_starts
from promptus_codec.errors import MediaError, PrxError, TruncatedError
from promptus_codec.metrics.quality import psnr as psnr_db
from promptus_codec.metrics.thumbnail import luma_thumbnail, thumbnail_shape
from promptus_codec.models.base import GenerationModel
from promptus_codec.noise import initial_noise
from promptus_codec.prompt import Factors
from promptus_codec.ratecontrol import FRAMING, RatePlan, StreamLayout, plan_rate, tail_bytes

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class EncodeOptions:
    """Everything that decides the bytes of the output. Recorded in the EncoderSettings record."""

    target_kbps: float | None = None  # total bitrate; None = --rank and --interval decide
    rank: int | None = None  # force every keyframe's rank
    interval: int | None = None  # force the keyframe interval K
    min_rank: int = 8  # rate control keeps at least this rank while shrinking K
    preset: str = "fast"  # fitting effort, see encoder.fit.PRESETS
    size: tuple[int, int] | None = None  # coded (W, H); None = short side 512, multiples of 64
    fit_mode: str = "crop"  # crop (the reference) | pad | scale
    fps: Fraction | None = None  # override the source frame rate
    refresh_s: float = 10.0  # start a scene at least this often (seconds); 0 = only at cuts
    scene_detector: str = DEFAULT_DETECTOR  # content | adaptive (PySceneDetect, pixels) | latent (paper A.1)
    cut_threshold: float | None = None  # the detector's threshold; None = its default (encoder/scenes.py)
    latent_format: LatentFormat = LatentFormat.FLOAT16  # storage of scene latents
    perceptual: str = "lpips"  # lpips | none | lpips-random (tests only: untrained backbone)
    fit_overrides: tuple[tuple[str, object], ...] = ()  # FitConfig fields changed from the preset
    verify_record: bool = True  # a ReconThumbnail after each keyframe, so decode --verify can measure drift

    def fit_config(self) -> FitConfig:
        if self.preset not in PRESETS:
            raise PrxError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[self.preset], **dict(self.fit_overrides))

    def settings(self, model_name: str) -> dict:
        """The JSON object stored in the EncoderSettings record."""
        d = asdict(self)
        d.update(
            fps=None if self.fps is None else f"{self.fps.numerator}/{self.fps.denominator}",
            latent_format=self.latent_format.name.lower(),
            size=None if self.size is None else list(self.size),
            fit_overrides=dict(self.fit_overrides),
            fit=self.fit_config().to_json(),
            model=model_name,
            encoder="promptus-codec",
        )
        return d


@dataclass
class Analysis:
    """What pass 1 learns about the input."""

    coded_width: int
    coded_height: int
    geometry: SourceGeometry
    frame_rate: Fraction
    scene_lengths: tuple[int, ...]
    scene_latents: dict[int, np.ndarray]  # first frame -> (C, h, w) float32 VAE latent
    scene_starts: tuple[SceneStart, ...] = ()  # why each scene starts (first frame, cut, refresh)
    stated_frames: int | None = None  # the frame count the input's container states; None = it does not say

    @property
    def frame_count(self) -> int:
        return sum(self.scene_lengths)

    def shortfall(self) -> str | None:
        """A warning when the input ended before the frames its container lists (a cut file)."""
        if self.stated_frames is None or self.frame_count >= self.stated_frames:
            return None
        return (
            f"the input ended after {self.frame_count} of the {self.stated_frames} frames its container lists "
            f"(a truncated file?); encoding those {self.frame_count}"
        )


@dataclass
class EncodeReport:
    frames: int
    keyframes: int
    scenes: int
    target_kbps: float | None
    achieved_kbps: float
    bytes: int
    mean_psnr_db: float
    interval: int
    ranks: list[int] = field(repr=False)


def frames_to_tensor(frames: list[np.ndarray] | np.ndarray, device, dtype=torch.float32) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) in [0, 1]."""
    array = np.ascontiguousarray(np.stack(frames) if isinstance(frames, list) else frames)
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


def store_latent(latent: np.ndarray, fmt: LatentFormat) -> SceneRecord:
    """A Scene record's latent in ``fmt`` (spec §6.1.1); first_frame is filled by the caller."""
    if fmt == LatentFormat.INT8:
        scale = float(np.float32(max(float(np.abs(latent).max()), 1e-12) / 127))
        q = np.clip(np.rint(latent / np.float32(scale)), -127, 127).astype(np.int8)
        return SceneRecord(0, fmt, scale, q)
    dtype = np.float16 if fmt == LatentFormat.FLOAT16 else np.float32
    return SceneRecord(0, fmt, 1.0, latent.astype(dtype))


class VideoInput:
    """Opens the input for each pass; stdin ('-') is spooled to a temporary file first."""

    def __init__(self, path: str, fps: Fraction | None, stack: ExitStack):
        from promptus_codec.media import open_video

        self._open_video = open_video
        self.fps = fps
        self.path = path
        if path == "-":
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="promptus-stdin-"))
            self.path = os.path.join(folder, "stdin.y4m")
            with open(self.path, "wb") as spool:
                shutil.copyfileobj(sys.stdin.buffer, spool)
        elif not os.path.exists(path):
            raise MediaError(f"no such file: {path}")

    def open(self):
        return self._open_video(self.path, fps=self.fps)


def coded_frames(source, coded_width: int, coded_height: int, geometry: SourceGeometry) -> Iterator[np.ndarray]:
    from promptus_codec.media import apply_geometry

    for frame in source:
        yield apply_geometry(frame, coded_width, coded_height, geometry)


def analyse(video: VideoInput, model: GenerationModel, options: EncodeOptions, progress=None) -> Analysis:
    """Pass 1: geometry, frame rate, scene cuts, then the scene latents (a second, short read)."""
    from promptus_codec.media import plan_geometry

    def encode_latent(frame: np.ndarray) -> np.ndarray:  # (H, W, 3) uint8 -> (C, h, w) float32
        with torch.inference_mode():
            pixels = frames_to_tensor([frame], model.device, model.dtype)
            return np.ascontiguousarray(model.encode_image(pixels)[0].float().cpu().numpy())

    with video.open() as source:
        coded_width, coded_height, geometry = plan_geometry(source.width, source.height, options.size, options.fit_mode, multiple=64)
        frame_rate = source.frame_rate
        stated_frames = source.frame_count
        detector = CutDetector(options.scene_detector, options.cut_threshold, frame_rate, encode_latent)
        for index, frame in enumerate(coded_frames(source, coded_width, coded_height, geometry)):
            detector.add(frame)
            if progress:
                progress(index + 1)
    if not detector.frames:
        raise MediaError(f"{video.path} has no frames")
    refresh = round(options.refresh_s * frame_rate) if options.refresh_s else 0
    starts = scene_starts(detector.finish(), detector.frames, int(refresh))
    wanted = {s.frame for s in starts}
    latents: dict[int, np.ndarray] = {}
    with video.open() as source:
        for index, frame in enumerate(coded_frames(source, coded_width, coded_height, geometry)):
            if index in wanted:
                latents[index] = encode_latent(frame)
    lengths = scene_lengths(starts, detector.frames)
    return Analysis(coded_width, coded_height, geometry, frame_rate, lengths, latents, tuple(starts), stated_frames)


def build_header(model: GenerationModel, analysis: Analysis) -> FileHeader:
    spec = model.spec
    f = spec.vae_scale_factor
    return FileHeader(
        coded_width=analysis.coded_width,
        coded_height=analysis.coded_height,
        geometry=analysis.geometry,
        frame_rate=analysis.frame_rate,
        frame_count=sum(analysis.scene_lengths),
        prompt_tokens=spec.prompt_tokens,
        prompt_dim=spec.prompt_dim,
        latent_channels=spec.latent_channels,
        latent_height=analysis.coded_height // f,
        latent_width=analysis.coded_width // f,
        generation=spec.generation,
        model=model.identity(),
    )


def settings_bytes(settings: dict) -> int:
    return len(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def perceptual_loss(kind: str, device) -> PerceptualLoss:
    from promptus_codec.metrics.perceptual import load_lpips

    if kind == "none":
        return PerceptualLoss(None)
    if kind not in ("lpips", "lpips-random"):
        raise PrxError(f"unknown --perceptual {kind!r}: choose lpips, none or lpips-random")
    return PerceptualLoss(load_lpips("alex", random_backbone=kind == "lpips-random").to(device))


@dataclass
class _State:
    """What the encoder carries from one keyframe to the next (closed loop)."""

    z_prev: np.ndarray | None = None  # (1, C, h, w) float32
    previous: Factors | None = None  # stored factors of the latest keyframe, numpy
    keyframes_done: int = 0
    last_frame: int = -1  # latest keyframe's index
    psnr: list[float] = field(default_factory=list)


class Encoder:
    """Pass 2 for one input: fit, write and reconstruct keyframe by keyframe."""

    def __init__(self, model: GenerationModel, options: EncodeOptions, on_keyframe: Callable | None = None, recon=None):
        self.model = model
        self.options = options
        self.fit = options.fit_config()
        self.on_keyframe = on_keyframe
        self.recon = recon  # a media frame writer for the encoder's own reconstruction, or None
        self.perceptual = perceptual_loss(options.perceptual, model.device)  # fails before any output exists
        self.initializer, self.initializer_digest = None, None
        from promptus_codec.models.registry import INITIALIZER_MODELS, load_initializer

        if self.fit.init == "auto":
            self.fit = replace(self.fit, init="amortized" if model.spec.name in INITIALIZER_MODELS else "warm")
        if self.fit.init == "amortized":
            self.initializer, self.initializer_digest = load_initializer(model.spec.name, model.device)
        elif self.fit.init not in ("random", "warm"):
            raise PrxError(f"unknown init {self.fit.init!r}: choose auto, random, warm or amortized")

    def plan(self, analysis: Analysis) -> tuple[FileHeader, EncoderSettingsRecord, RatePlan]:
        header = build_header(self.model, analysis)
        settings = self.options.settings(self.model.spec.name)
        # What the encode started from changes its bytes, though not what a decoder needs.
        settings["fit"] = self.fit.to_json()  # with "auto" resolved to the start actually used
        settings["initializer"] = None if self.initializer_digest is None else self.initializer_digest.hex()
        settings["scene_starts"] = [[start.frame, start.reason] for start in analysis.scene_starts]
        layout = StreamLayout(
            scene_lengths=analysis.scene_lengths,
            frame_rate=analysis.frame_rate,
            prompt_shape=header.prompt_shape,
            latent_shape=header.latent_shape,
            latent_format=self.options.latent_format,
            model_name=header.model.name,
            settings_bytes=settings_bytes(settings),
            thumbnail_payload=recon_thumbnail_payload_size(*thumbnail_shape(header.coded_width, header.coded_height))
            if self.options.verify_record
            else 0,
        )
        rate = plan_rate(layout, self.options.target_kbps, self.options.rank, self.options.interval, self.options.min_rank)
        return header, EncoderSettingsRecord(settings), rate

    def _fit_interval(self, runtime, noise, state: _State, frames: np.ndarray, keyframe: int, rank: int, writer: PrxWriter):
        """Fit, write and reconstruct one keyframe; ``frames`` are its interval's (K, H, W, 3)."""
        device = self.model.device
        as_torch = lambda f: None if f is None else Factors(f.frame_index, torch.from_numpy(f.u), torch.from_numpy(f.v))  # noqa: E731
        result = fit_keyframe(
            runtime.generator,
            frames_to_tensor(frames, device),
            torch.from_numpy(state.z_prev).to(device),
            torch.from_numpy(noise).to(device),
            keyframe,
            rank,
            as_torch(state.previous),
            self.fit,
            self.perceptual,
            warm=self._predicted(frames[-1], keyframe, rank) if self.initializer else as_torch(state.previous),
        )
        record = KeyframeRecord(
            keyframe, rank, QuantScheme.AFFINE_INT8, result.u_scale, result.u_zero_point, result.v_scale, result.v_zero_point, result.u, result.v
        )
        writer.write(record)
        self._reconstruct(runtime, noise, state, record, frames, writer, result.frame_losses)
        return result

    def _predicted(self, frame: np.ndarray, keyframe: int, rank: int) -> Factors:
        """The prompt encoder's rank-``rank`` factors for one (H, W, 3) frame, a start for fitting."""
        with torch.no_grad():
            u, v = self.initializer(frames_to_tensor([frame], self.model.device))  # (1, m, R), (1, R, n)
        return Factors(keyframe, u[0, :, :rank].float().cpu(), v[0, :rank].float().cpu())

    def _reconstruct(self, runtime, noise, state: _State, record: KeyframeRecord, frames, writer, losses) -> Interval:
        """Decode ``record`` as the decoder will; write its ReconThumbnail and Quality records; advance the state.

        Quality comes last: resume keeps the records up to the last Quality record.
        """
        factors = dequantized_factors(record)
        interval = decode_interval(runtime, state.z_prev, noise, state.previous, factors)
        self._write_recon(interval)
        if self.options.verify_record:
            width, height = thumbnail_shape(writer.header.coded_width, writer.header.coded_height)
            writer.write(ReconThumbnailRecord(record.frame_index, luma_thumbnail(interval.images[-1], width, height)))
        psnr = [psnr_db(b, a) for a, b in zip(interval.images, frames)]
        writer.write(QualityRecord(interval.first_frame, tuple(psnr), tuple(losses)))
        state.psnr += psnr
        state.z_prev, state.previous = interval.next_latent, factors
        state.keyframes_done += 1
        state.last_frame = record.frame_index
        return interval

    def encode(self, video: VideoInput, output: Path, analysis: Analysis, resume: bool = False) -> EncodeReport:
        header, settings, rate = self.plan(analysis)
        partial = Path(str(output) + PARTIAL_SUFFIX)
        runtime = TorchRuntime(self.model, header.generation)
        noise = initial_noise(header.generation.noise_seed, header.latent_shape, header.generation.noise_generator)
        keyframes = rate.keyframes
        state = _State()
        if resume:
            stream, writer = self._reopen(partial, header, settings, runtime, noise, state, analysis)
        else:
            stream = open(partial, "wb")
            writer = PrxWriter(stream, header)
            writer.write(settings)
        with stream:
            self._run(video, analysis, header, rate, keyframes, runtime, noise, state, writer, stream)
            padding = rate.total_bytes - writer.offset - FRAMING - tail_bytes(writer.order.scene_count) if rate.padding_bytes >= 0 else -1
            if padding >= 0:
                writer.write(PaddingRecord(padding))
            end = writer.finish()
        os.replace(partial, output)
        size = output.stat().st_size
        duration = float(end.frame_count / header.frame_rate)
        return EncodeReport(
            frames=end.frame_count,
            keyframes=end.keyframe_count,
            scenes=end.scene_count,
            target_kbps=self.options.target_kbps,
            achieved_kbps=size * 8 / duration / 1000,
            bytes=size,
            mean_psnr_db=float(np.mean(state.psnr)) if state.psnr else float("nan"),
            interval=rate.interval,
            ranks=rate.ranks,
        )

    def _write_recon(self, interval: Interval) -> None:
        for image in interval.images if self.recon is not None else ():
            self.recon.write(image)

    def _run(self, video, analysis, header, rate, keyframes, runtime, noise, state, writer, stream):
        """Stream the frames again and fit every keyframe not yet written."""
        ranks = dict(zip(keyframes, rate.ranks))
        scene_starts = set(analysis.scene_latents)
        pending: list[np.ndarray] = []
        with video.open() as source:
            for index, frame in enumerate(coded_frames(source, header.coded_width, header.coded_height, header.geometry)):
                if index <= state.last_frame:
                    continue  # already in the partial file
                if index in scene_starts:
                    scene = store_latent(analysis.scene_latents[index], self.options.latent_format)
                    scene.first_frame = index
                    writer.write(scene)
                    state.z_prev, state.previous = scene.latent_float32()[None], None
                pending.append(frame)
                if index in ranks:
                    result = self._fit_interval(runtime, noise, state, np.stack(pending), index, ranks[index], writer)
                    stream.flush()
                    pending = []
                    if self.on_keyframe:
                        self.on_keyframe(state, result, len(keyframes))

    def _reopen(self, partial: Path, header, settings, runtime, noise, state: _State, analysis):
        """Continue ``partial``: keep every record up to the last Quality record, rebuild the state."""
        if not partial.is_file():
            raise PrxError(f"nothing to resume: {partial} does not exist (run without --resume)")
        stream = open(partial, "r+b")
        try:
            try:
                reader = PrxReader(stream)
                kept: list[tuple[object, int]] = [(record, reader.record_span[1]) for record in reader]
            except TruncatedError:
                kept = []  # killed before the header was on disk
            else:
                if reader.header != header:
                    raise PrxError(f"{partial} was made from another input, model or geometry: delete it or run without --resume")
                if kept and kept[0][0] != settings:
                    raise PrxError(f"{partial} was made with other settings: delete it or run without --resume")
            if not kept:  # nothing worth keeping: start afresh in the same file
                stream.seek(0)
                stream.truncate()
                writer = PrxWriter(stream, header)
                writer.write(settings)
                return stream, writer
            while kept and not isinstance(kept[-1][0], (QualityRecord, EncoderSettingsRecord)):
                kept.pop()
            order = DecodeOrder(header)
            offset = len(self._header_bytes(header))
            for record, end in kept:
                order.accept(record, offset)
                offset = end
                if isinstance(record, SceneRecord):
                    state.z_prev, state.previous = record.latent_float32()[None], None
                elif isinstance(record, KeyframeRecord):
                    factors = dequantized_factors(record)
                    interval = decode_interval(runtime, state.z_prev, noise, state.previous, factors)
                    self._write_recon(interval)
                    state.z_prev, state.previous = interval.next_latent, factors
                    state.keyframes_done += 1
                    state.last_frame = record.frame_index
                elif isinstance(record, QualityRecord):
                    state.psnr += list(record.psnr_db)
            stream.seek(offset)
            stream.truncate()
            return stream, PrxWriter(stream, header, resume_from=order, offset=offset)
        except BaseException:
            stream.close()
            raise

    @staticmethod
    def _header_bytes(header: FileHeader) -> bytes:
        from promptus_codec.container.codec import header_to_bytes

        return header_to_bytes(header)
