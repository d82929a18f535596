"""The encode driver: video in, .prx out, at a target bitrate.

    pass 1  video --media--> coded frames --CutDetector (pixels, or latents)--> scenes
            scene starts --model.encode_image--> scene latents
            scenes + shapes --ratecontrol.plan_rate--> interval K, rank per keyframe
    pass 2  for each keyframe k (frames streamed again, one interval held at a time):
              fit U, V through generate.GenerationStep (encoder/fit.py)
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
from dataclasses import dataclass, field, replace
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
from promptus_codec.decoder.driver import ClosedLoop, Interval, stream_noise
from promptus_codec.decoder.torch_runtime import TorchRuntime
from promptus_codec.encoder.fit import FitResult, FitTask, PerceptualLoss, fit_keyframe
from promptus_codec.encoder.options import INITS, EncodeOptions
from promptus_codec.encoder.scenes import CutDetector, SceneStart, scene_lengths, scene_starts
from promptus_codec.errors import MediaError, PrxError, TruncatedError
from promptus_codec.metrics.quality import psnr as psnr_db
from promptus_codec.metrics.thumbnail import luma_thumbnail, thumbnail_shape
from promptus_codec.models.base import GenerationModel
from promptus_codec.prompt import Factors
from promptus_codec.ratecontrol import FRAMING, RatePlan, StreamLayout, plan_rate, tail_bytes

PARTIAL_SUFFIX = ".partial"


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

    fit = options.fit_config()

    def encode_latent(
        frame: np.ndarray, index: int | None = None
    ) -> np.ndarray:  # (H, W, 3) uint8 -> (C, h, w) float32
        """The posterior mean; with ``index``, the scene latent of frame ``index`` as FitConfig.scene_latent says."""
        sample = None
        if index is not None and fit.scene_latent == "sample":
            sample = torch.Generator(model.device).manual_seed(fit.seed * 1_000_003 + index)
        with torch.inference_mode():
            pixels = frames_to_tensor([frame], model.device, model.dtype)
            return np.ascontiguousarray(model.encode_image(pixels, sample)[0].float().cpu().numpy())

    with video.open() as source:
        coded_width, coded_height, geometry = plan_geometry(
            source.width, source.height, options.size, options.fit_mode, multiple=64
        )
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
                latents[index] = encode_latent(frame, index)
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
    from promptus_codec.metrics.perceptual import lpips_distance, vgg19_distance

    if kind == "none":
        return PerceptualLoss(None)
    build = {"lpips": lpips_distance, "vgg19": vgg19_distance}.get(kind.removesuffix("-random"))
    if build is None:
        raise PrxError(f"unknown --perceptual {kind!r}: choose lpips, vgg19 or none")
    return PerceptualLoss(build(random_backbone=kind.endswith("-random")).to(device))


@dataclass
class Progress:
    """How far an encode has come, as on_keyframe hears it."""

    keyframes_done: int = 0
    keyframes_total: int = 0
    psnr: list[float] = field(default_factory=list)  # per frame of the encoder's own reconstruction, dB


class Encoder:
    """Pass 2 for one input: fit, write and reconstruct keyframe by keyframe.

    Holds what holds for the whole encode (model, options, fitting loss, initialiser);
    :meth:`encode` makes an :class:`EncodeRun` for the state that changes keyframe by keyframe.
    """

    def __init__(self, model: GenerationModel, options: EncodeOptions, on_keyframe: Callable | None = None, recon=None):
        self.model = model
        self.options = options
        self.fit = options.fit_config()
        self.on_keyframe = on_keyframe  # on_keyframe(progress: Progress, result: FitResult)
        self.recon = recon  # a media frame writer for the encoder's own reconstruction, or None
        self.perceptual = perceptual_loss(options.perceptual, model.device)  # fails before any output exists
        self.initializer, self.initializer_digest = None, None
        from promptus_codec.models.registry import INITIALIZER_MODELS, load_initializer

        if self.fit.init == "auto":
            self.fit = replace(self.fit, init="amortized" if model.spec.name in INITIALIZER_MODELS else "warm")
        if self.fit.init == "amortized":
            self.initializer, self.initializer_digest = load_initializer(model.spec.name, model.device)
        elif self.fit.init not in ("random", "uniform", "warm"):
            raise PrxError(f"unknown init {self.fit.init!r}: choose one of {', '.join(INITS)}")

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
        rate = plan_rate(
            layout, self.options.target_kbps, self.options.rank, self.options.interval, self.options.min_rank
        )
        return header, EncoderSettingsRecord(settings), rate

    def start_for(self, frame: np.ndarray, keyframe: int, rank: int, previous: Factors | None) -> Factors | None:
        """Where fitting keyframe ``keyframe`` starts: the prompt encoder's factors for its (H, W, 3)
        ``frame`` (amortized), the previous keyframe's (warm), or None (seeded random or uniform)."""
        if self.fit.init in ("random", "uniform"):
            return None
        if self.initializer is None:
            return (
                None
                if previous is None
                else Factors(previous.frame_index, torch.from_numpy(previous.u), torch.from_numpy(previous.v))
            )
        with torch.no_grad():
            u, v = self.initializer(frames_to_tensor([frame], self.model.device))  # (1, m, R), (1, R, n)
        return Factors(keyframe, u[0, :, :rank].float().cpu(), v[0, :rank].float().cpu())

    def encode(self, video: VideoInput, output: Path, analysis: Analysis, resume: bool = False) -> EncodeReport:
        header, settings, rate = self.plan(analysis)
        partial = Path(str(output) + PARTIAL_SUFFIX)
        run = (
            EncodeRun.resume(self, partial, header, settings)
            if resume
            else EncodeRun.start(self, partial, header, settings)
        )
        with run.stream:
            run.progress.keyframes_total = len(rate.keyframes)
            run.fit_remaining(video, analysis, rate)
            padding = (
                rate.total_bytes - run.writer.offset - FRAMING - tail_bytes(run.writer.order.scene_count)
                if rate.padding_bytes >= 0
                else -1
            )
            if padding >= 0:
                run.writer.write(PaddingRecord(padding))
            end = run.writer.finish()
        os.replace(partial, output)
        size = output.stat().st_size
        duration = float(end.frame_count / header.frame_rate)
        psnr = run.progress.psnr
        return EncodeReport(
            frames=end.frame_count,
            keyframes=end.keyframe_count,
            scenes=end.scene_count,
            target_kbps=self.options.target_kbps,
            achieved_kbps=size * 8 / duration / 1000,
            bytes=size,
            mean_psnr_db=float(np.mean(psnr)) if psnr else float("nan"),
            interval=rate.interval,
            ranks=rate.ranks,
        )


class EncodeRun:
    """One encode's changing state: the partial file, its writer, and the closed loop.

    Every record goes to the writer and, in the same order, to the ClosedLoop a decoder runs,
    so z_prev and the previous keyframe are always what the decoder will have there.
    """

    def __init__(self, encoder: Encoder, stream, writer: PrxWriter):
        self.encoder = encoder
        self.stream = stream  # the open OUT.prx.partial
        self.writer = writer
        header = writer.header
        self.loop = ClosedLoop(TorchRuntime(encoder.model, header.generation), stream_noise(header))
        self.progress = Progress()

    @classmethod
    def start(cls, encoder: Encoder, partial: Path, header: FileHeader, settings: EncoderSettingsRecord) -> "EncodeRun":
        stream = open(partial, "wb")
        writer = PrxWriter(stream, header)
        writer.write(settings)
        return cls(encoder, stream, writer)

    @classmethod
    def resume(
        cls, encoder: Encoder, partial: Path, header: FileHeader, settings: EncoderSettingsRecord
    ) -> "EncodeRun":
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
                    raise PrxError(
                        f"{partial} was made from another input, model or geometry: delete it or run without --resume"
                    )
                if kept and kept[0][0] != settings:
                    raise PrxError(f"{partial} was made with other settings: delete it or run without --resume")
            if not kept:  # nothing worth keeping: start afresh in the same file
                stream.seek(0)
                stream.truncate()
                writer = PrxWriter(stream, header)
                writer.write(settings)
                return cls(encoder, stream, writer)
            while kept and not isinstance(kept[-1][0], (QualityRecord, EncoderSettingsRecord)):
                kept.pop()
            order = DecodeOrder(header)
            offset = header_size(header)
            for record, end in kept:
                order.accept(record, offset)
                offset = end
            stream.seek(offset)
            stream.truncate()
            run = cls(encoder, stream, PrxWriter(stream, header, resume_from=order, offset=offset))
            for record, _ in kept:
                interval = run.loop.accept(record)
                if interval is not None:
                    encoder_recon_write(encoder, interval)
                    run.progress.keyframes_done += 1
                elif isinstance(record, QualityRecord):
                    run.progress.psnr += list(record.psnr_db)
            return run
        except BaseException:
            stream.close()
            raise

    def write(self, record) -> None:
        """Write ``record`` and feed it to the closed loop (a Keyframe record's interval is reconstructed)."""
        self.writer.write(record)
        return self.loop.accept(record)

    def fit_remaining(self, video: VideoInput, analysis: Analysis, rate: RatePlan) -> None:
        """Stream the frames again and fit every keyframe not yet written."""
        header = self.writer.header
        ranks = dict(zip(rate.keyframes, rate.ranks))
        pending: list[np.ndarray] = []
        with video.open() as source:
            for index, frame in enumerate(
                coded_frames(source, header.coded_width, header.coded_height, header.geometry)
            ):
                if index <= self.loop.last_keyframe:
                    continue  # already in the partial file
                if index in analysis.scene_latents:
                    scene = store_latent(analysis.scene_latents[index], self.encoder.options.latent_format)
                    scene.first_frame = index
                    self.write(scene)
                pending.append(frame)
                if index in ranks:
                    result = self.fit_interval(np.stack(pending), index, ranks[index])
                    self.stream.flush()
                    pending = []
                    if self.encoder.on_keyframe:
                        self.encoder.on_keyframe(self.progress, result)

    def fit_interval(self, frames: np.ndarray, keyframe: int, rank: int) -> FitResult:
        """Fit, write and reconstruct one keyframe; ``frames`` are its interval's (K, H, W, 3)."""
        encoder, loop = self.encoder, self.loop
        device = encoder.model.device
        previous = (
            None
            if loop.previous is None
            else Factors(
                loop.previous.frame_index, torch.from_numpy(loop.previous.u), torch.from_numpy(loop.previous.v)
            )
        )
        task = FitTask(
            targets=frames_to_tensor(frames, device),
            z_prev=torch.from_numpy(loop.z_prev).to(device),
            noise=torch.from_numpy(loop.noise).to(device),
            frame_index=keyframe,
            rank=rank,
            previous=previous,
            start=encoder.start_for(frames[-1], keyframe, rank, loop.previous),
        )
        result = fit_keyframe(loop.runtime.generator, task, encoder.fit, encoder.perceptual)
        record = KeyframeRecord(
            keyframe,
            rank,
            QuantScheme.AFFINE_INT8,
            result.u_scale,
            result.u_zero_point,
            result.v_scale,
            result.v_zero_point,
            result.u,
            result.v,
        )
        interval = self.write(record)  # decoded exactly as the decoder will
        self.write_checks(interval, frames, result.frame_losses)
        return result

    def write_checks(self, interval: Interval, frames: np.ndarray, losses: list[float]) -> None:
        """The reconstruction of one keyframe's interval: to --recon, ReconThumbnail and Quality records.

        Quality comes last: resume keeps the records up to the last Quality record.
        """
        encoder_recon_write(self.encoder, interval)
        header = self.writer.header
        if self.encoder.options.verify_record:
            width, height = thumbnail_shape(header.coded_width, header.coded_height)
            self.write(
                ReconThumbnailRecord(
                    interval.first_frame + len(interval.images) - 1, luma_thumbnail(interval.images[-1], width, height)
                )
            )
        psnr = [psnr_db(b, a) for a, b in zip(interval.images, frames)]
        self.write(QualityRecord(interval.first_frame, tuple(psnr), tuple(losses)))
        self.progress.psnr += psnr
        self.progress.keyframes_done += 1


def encoder_recon_write(encoder: Encoder, interval: Interval) -> None:
    """The interval's frames to the encoder's --recon writer, if it has one."""
    for image in interval.images if encoder.recon is not None else ():
        encoder.recon.write(image)


def header_size(header: FileHeader) -> int:
    from promptus_codec.container.codec import header_to_bytes

    return len(header_to_bytes(header))
