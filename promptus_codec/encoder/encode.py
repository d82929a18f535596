"""The encode driver: video in, .prx out, at a target bitrate.

    pass 1  video --media--> coded frames --CutDetector (pixels, or latents)--> scenes
            scene starts --model.encode_image--> scene latents
            scenes + shapes --ratecontrol.plan_rate--> interval K, rank per keyframe
            --chunks.build_plan--> OUT.work/plan.json: one chunk per scene, its ranks and byte budget
    pass 2  for each chunk not yet done (in this process, or on Ray workers: encoder/distributed.py):
              for each keyframe k of the chunk:
                fit U, V through generate.GenerationStep (encoder/fit.py)
                keep the Keyframe record, decode it exactly as a decoder will (decoder.driver.ClosedLoop)
                ├─> ReconThumbnail record (luma fingerprint of the keyframe, for decode --verify)
                ├─> Quality record (PSNR of the encoder's own reconstruction)
                └─> z_prev for the next interval (closed loop)
              the chunk's records ──> OUT.work/chunk-*.prx (content-addressed, renamed into place)
    merge   header, EncoderSettings, the chunks in order, Padding, SeekIndex, End ──> OUT.prx (renamed)

Everything the encoder does is deterministic (seeded per keyframe, each chunk starting from its
scene latent, under the plan's torch thread count), so a chunk fitted anywhere, or again after a
crash, gives the same bytes, and ``--resume`` only fits the chunks that are missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from promptus_codec.container.codec import recon_thumbnail_payload_size, settings_json
from promptus_codec.container.reader import PrxReader
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    FileHeader,
    KeyframeRecord,
    LatentFormat,
    QualityRecord,
    QuantScheme,
    ReconThumbnailRecord,
    SceneRecord,
    SourceGeometry,
)
from promptus_codec.decoder.driver import ClosedLoop, Interval, stream_noise
from promptus_codec.decoder.torch_runtime import TorchRuntime
from promptus_codec.encoder.chunks import Chunk, ChunkPlan, WorkDir, build_plan, chunk_bytes, input_sha256, merge
from promptus_codec.encoder.fit import FitResult, FitTask, PerceptualLoss, fit_keyframe
from promptus_codec.encoder.options import INITS, EncodeOptions
from promptus_codec.encoder.scenes import CutDetector, SceneStart, scene_lengths, scene_starts
from promptus_codec.errors import MediaError, PrxError, UsageError
from promptus_codec.metrics.quality import psnr as psnr_db
from promptus_codec.metrics.thumbnail import luma_thumbnail, thumbnail_shape
from promptus_codec.models.base import GenerationModel
from promptus_codec.prompt import Factors
from promptus_codec.ratecontrol import RatePlan, StreamLayout, plan_rate


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


def perceptual_loss(kind: str, device) -> PerceptualLoss:
    from promptus_codec.metrics.perceptual import lpips_distance, vgg19_distance

    if kind == "none":
        return PerceptualLoss(None)
    build = {"lpips": lpips_distance, "vgg19": vgg19_distance}.get(kind.removesuffix("-random"))
    if build is None:
        raise UsageError(f"unknown --perceptual {kind!r}: choose lpips, vgg19 or none")
    return PerceptualLoss(build(random_backbone=kind.endswith("-random")).to(device))


class Encoder:
    """Pass 2 for one input: fit, write and reconstruct chunk by chunk, keyframe by keyframe.

    Holds what holds for the whole encode (model, options, fitting loss, initialiser);
    :meth:`fit_chunk` fits one chunk (a :class:`ChunkFit` holds its closed loop); :meth:`encode` plans,
    runs the chunks through a scheduler and merges.
    """

    def __init__(
        self,
        model: GenerationModel,
        options: EncodeOptions,
        on_keyframe: Callable | None = None,
        recon=None,
        threads: int | None = None,
    ):
        self.model = model
        # the model's own rate-control limits where none are given, resolved here so that the settings
        # record the values used
        spec = model.spec
        self.options = replace(
            options,
            min_rank=spec.min_rank if options.min_rank is None else options.min_rank,
            max_interval=spec.max_interval if options.max_interval is None else options.max_interval,
        )
        self.fit = options.fit_config()
        self.on_keyframe = on_keyframe  # on_keyframe(frames: int) after each keyframe: frames fitted in its interval
        self.recon = recon  # a media frame writer for the encoder's own reconstruction, or None
        # torch's intra-op thread count changes the last bits of a fit (measured: 1 vs 2 threads differ at
        # byte 1329 of a 64x64 tiny encode), so it is part of the settings: every chunk runs with it.
        self.threads = torch.get_num_threads() if threads is None else threads
        self.perceptual = perceptual_loss(options.perceptual, model.device)  # fails before any output exists
        self.initializer, self.initializer_digest = None, None
        from promptus_codec.models.registry import load_initializer

        if self.fit.init == "auto":
            # warm, even where a prompt encoder exists: mini's starts a scene as well as random factors on its
            # first frame and worse on others (README, "Fitting"); amortized is one flag away, or --initializer
            self.fit = replace(self.fit, init="amortized" if options.initializer_file else "warm")
        if self.fit.init == "amortized":
            self.initializer, self.initializer_digest = load_initializer(
                spec.name, model.identity(), model.device, options.initializer_file
            )
        elif options.initializer_file is not None:
            raise UsageError(f"--initializer is a start for --init amortized, not for --init {self.fit.init}")
        elif self.fit.init not in ("random", "uniform", "warm"):
            raise UsageError(f"unknown init {self.fit.init!r}: choose one of {', '.join(INITS)}")

    def settings(self) -> dict:
        """The EncoderSettings JSON without what pass 1 found (``scene_starts``): what a resume checks."""
        settings = self.options.settings(self.model.spec.name)
        # What the encode started from changes its bytes, though not what a decoder needs.
        settings["fit"] = self.fit.to_json()  # with "auto" resolved to the start actually used
        settings["initializer"] = None if self.initializer_digest is None else self.initializer_digest.hex()
        settings["threads"] = self.threads
        return settings

    def plan(self, analysis: Analysis) -> tuple[FileHeader, EncoderSettingsRecord, RatePlan]:
        header = build_header(self.model, analysis)
        settings = self.settings()
        settings["scene_starts"] = [[start.frame, start.reason] for start in analysis.scene_starts]
        layout = StreamLayout(
            scene_lengths=analysis.scene_lengths,
            frame_rate=analysis.frame_rate,
            prompt_shape=header.prompt_shape,
            latent_shape=header.latent_shape,
            latent_format=self.options.latent_format,
            model_name=header.model.name,
            settings_bytes=len(settings_json(settings)),  # the very text the writer will write
            thumbnail_payload=recon_thumbnail_payload_size(*thumbnail_shape(header.coded_width, header.coded_height))
            if self.options.verify_record
            else 0,
        )
        rate = plan_rate(
            layout,
            self.options.target_kbps,
            self.options.rank,
            self.options.interval,
            self.options.min_rank,
            self.options.max_interval,
            self.model.spec.least_rank,
        )
        return header, EncoderSettingsRecord(settings), rate

    def start_for(self, frame: np.ndarray, keyframe: int, rank: int, previous: Factors | None) -> Factors | None:
        """Where fitting keyframe ``keyframe`` starts, or None for seeded factors (random, uniform).

        warm and amortized both start a later keyframe from the previous keyframe's factors: the
        decoder interpolates U and V separately, so neighbours must share a basis, and a warm start
        is the better one there (README, "Fitting"). A scene's first keyframe starts from the prompt
        encoder's factors for its (H, W, 3) ``frame`` (amortized) or from seeded random ones (warm).
        """
        if self.fit.init in ("random", "uniform"):
            return None
        if previous is not None:
            return Factors(previous.frame_index, torch.from_numpy(previous.u), torch.from_numpy(previous.v))
        if self.initializer is None:
            return None
        with torch.no_grad():
            u, v = self.initializer(frames_to_tensor([frame], self.model.device))  # (1, m, R), (1, R, n)
        return Factors(keyframe, u[0, :, :rank].float().cpu(), v[0, :rank].float().cpu())

    # -- pass 2, chunk by chunk -----------------------------------------------------------------

    def chunk_plan(self, video: VideoInput, analysis: Analysis, digest: str | None = None) -> ChunkPlan:
        """Pass 1's result frozen: the scenes as chunks, their ranks and byte budgets (encoder/chunks.py)."""
        header, settings, rate = self.plan(analysis)
        digest = input_sha256(video.path) if digest is None else digest
        return build_plan(
            video.path,
            digest,
            header,
            settings,
            rate,
            analysis,
            self.options.latent_format,
            self.options.verify_record,
            self.options.target_kbps,
        )

    def fit_chunk(self, plan: ChunkPlan, chunk: Chunk, frames: np.ndarray) -> bytes:
        """Fit one chunk from its (F, H, W, 3) uint8 frames; its file's bytes (chunks.chunk_bytes).

        The one piece of code that fits: the serial path runs it in-process, Ray workers run it
        remotely (encoder/distributed.py), always under the plan's thread count.
        """
        if len(frames) != chunk.frame_count:
            raise PrxError(f"{chunk.describe()}: got {len(frames)} frames")
        with torch_threads(plan.threads):
            fit = ChunkFit(self, plan.header)
            scene = store_latent(plan.latents[chunk.index], self.options.latent_format)
            scene.first_frame = chunk.first_frame
            fit.write(scene)
            previous = chunk.first_frame - 1
            for keyframe, rank in chunk.keyframes:
                interval = frames[previous + 1 - chunk.first_frame : keyframe + 1 - chunk.first_frame]
                fit.fit_interval(interval, keyframe, rank)
                if self.on_keyframe:
                    self.on_keyframe(len(interval))
                previous = keyframe
        return chunk_bytes(plan.header, chunk, fit.records)

    def encode(
        self,
        video: VideoInput,
        output: Path,
        analysis: Analysis | None = None,
        resume: bool = False,
        scheduler=None,
        on_plan: Callable | None = None,
    ) -> EncodeReport:
        """Plan (or load the plan, with ``resume``), fit the chunks not done, merge into ``output``.

        ``scheduler`` runs the chunks (encoder/distributed.py; default: serially in this process).
        ``on_plan(plan, done)`` hears the plan and the chunks already done before fitting starts.
        """
        from promptus_codec.encoder.distributed import SerialScheduler

        output = Path(output)
        work = WorkDir(output)
        if resume:
            plan = work.load()
            plan.check_resume(str(work.path), input_sha256(video.path), self.model.identity(), self.settings())
        else:
            if analysis is None:
                analysis = analyse(video, self.model, self.options)
            plan = work.start(self.chunk_plan(video, analysis))  # refuses an unreachable bitrate before
        done = {c.index for c in plan.chunks if work.find(c, plan.header) is not None}
        if on_plan:
            on_plan(plan, done)
        todo = [c for c in plan.chunks if c.index not in done]
        scheduler = scheduler or SerialScheduler()
        scheduler.run(self, plan, todo, chunk_frames(video, plan, todo), work.store)
        psnr: list[float] = []
        end = merge(plan, work, output, lambda r: psnr.extend(r.psnr_db) if isinstance(r, QualityRecord) else None)
        if self.recon is not None:
            self.write_recon(output)
        work.remove()
        size = output.stat().st_size
        return EncodeReport(
            frames=end.frame_count,
            keyframes=end.keyframe_count,
            scenes=end.scene_count,
            target_kbps=self.options.target_kbps,
            achieved_kbps=size * 8 / float(end.frame_count / plan.header.frame_rate) / 1000,
            bytes=size,
            mean_psnr_db=float(np.mean(psnr)) if psnr else float("nan"),
            interval=plan.interval,
            ranks=[rank for c in plan.chunks for _, rank in c.keyframes],
        )

    def write_recon(self, stream: Path) -> None:
        """--recon: the merged stream decoded in this process, as ``promptus decode`` decodes it.

        Decoded here rather than collected from the workers: the chunks' closed loops ran under the
        plan's thread count (maybe on other machines), and a decoder runs under its own, so this is
        the picture a decoder on this machine shows, byte for byte.
        """
        from promptus_codec.decoder.driver import decode_frames

        with open(stream, "rb") as f:
            reader = PrxReader(f)
            for _, image in decode_frames(reader, TorchRuntime(self.model, reader.header.generation)):
                self.recon.write(image)


@contextmanager
def torch_threads(count: int):
    """Run the block with torch's intra-op thread count set to ``count``, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chunk_frames(video: VideoInput, plan: ChunkPlan, todo: list[Chunk]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Read the input once, in order, and yield each chunk of ``todo`` with its (F, H, W, 3) uint8 frames."""
    header = plan.header
    wanted = {c.first_frame: c for c in todo}
    chunk, frames = None, []
    with video.open() as source:
        for index, frame in enumerate(coded_frames(source, header.coded_width, header.coded_height, header.geometry)):
            if chunk is None and index in wanted:
                chunk, frames = wanted[index], []
            if chunk is not None:
                frames.append(frame)
                if index == chunk.last_frame:
                    yield chunk, np.stack(frames)
                    chunk, frames = None, []
    if chunk is not None:
        raise MediaError(f"{video.path} ended inside {chunk.describe()}: the input changed since the plan was made")


class ChunkFit:
    """One chunk's closed loop: every record goes to ``records`` and, in the same order, to the
    ClosedLoop a decoder runs, so z_prev and the previous keyframe are what the decoder will have."""

    def __init__(self, encoder: Encoder, header: FileHeader):
        self.encoder = encoder
        self.header = header
        self.loop = ClosedLoop(TorchRuntime(encoder.model, header.generation), stream_noise(header))
        self.records: list = []

    def write(self, record) -> Interval | None:
        """Keep ``record`` and feed it to the closed loop (a Keyframe record's interval is reconstructed)."""
        self.records.append(record)
        return self.loop.accept(record)

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
        """The reconstruction of one keyframe's interval: ReconThumbnail and Quality records."""
        header = self.header
        if self.encoder.options.verify_record:
            width, height = thumbnail_shape(header.coded_width, header.coded_height)
            self.write(
                ReconThumbnailRecord(
                    interval.first_frame + len(interval.images) - 1, luma_thumbnail(interval.images[-1], width, height)
                )
            )
        psnr = [psnr_db(b, a) for a, b in zip(interval.images, frames)]
        self.write(QualityRecord(interval.first_frame, tuple(psnr), tuple(losses)))
