r"""`promptus compare`: Promptus against classic codecs at the bitrates Promptus really reaches.

    SOURCE --encoder pass 1 (analyse, once)--> coded frames --> reference/ PNGs
                                                  (lossless RGB: every codec is scored against them)
                                                            \-> coded.y4m (yuv420p: the baselines' input)
    for each target bitrate T:
        Promptus   Encoder.encode at T -> .prx --decode_frames--> frames --measure--> row   achieved A = .prx size
        baselines  coded.y4m at A -> raw stream --decode--> frames --measure--> row      achieved = stream size
        strip_<T>k.png: source | promptus | baselines, the middle frame
    BD-rate of Promptus against each baseline, per metric (metrics.bdrate)
    OUTDIR/compare.json, compare.csv, rd.png, strip_*.png

Every codec codes the same frames at the same coded size, and every bitrate in the table
is bytes * 8 / duration of the file that codec wrote.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

from promptus_codec.encoder.options import DEFAULT_THREADS
from promptus_codec.errors import UsageError
from promptus_codec.metrics.baselines import BASELINES, achieved_kbps, encode_baseline
from promptus_codec.metrics.bdrate import bd_rate
from promptus_codec.metrics.evaluate import EvalResult, fmt, measure, write_json
from promptus_codec.metrics.quality import LPIPS_NETS, SEVERE_LPIPS, Scorer, ms_ssim_scales

ROW_FIELDS = (
    "codec",
    "target_kbps",
    "achieved_kbps",
    "bytes",
    "frames",
    "psnr_y",
    "psnr_rgb",
    "ms_ssim",
    "lpips_alex",
    "lpips_vgg",
    "severe_share_alex",
    "severe_share_vgg",
)
BD_METRICS = {"psnr_y": True, "ms_ssim": True, "lpips_alex": False, "lpips_vgg": False}  # metric -> higher is better


@dataclass(frozen=True)
class CompareOptions:
    """What `promptus compare` runs. Encoder fields mean what they mean for `promptus encode`."""

    bitrates_kbps: tuple[float, ...]  # Promptus targets; baselines get what Promptus achieved
    model: str = "tiny"  # generation model for Promptus
    weights: str | None = None  # sd-turbo weights (see `promptus encode --weights`)
    preset: str = "fast"  # Promptus fitting effort
    fit_overrides: tuple[tuple[str, object], ...] = ()  # FitConfig fields changed from the preset
    perceptual: str = "auto"  # encoder loss: lpips when the AlexNet weights are here, else none
    size: tuple[int, int] | None = None  # coded (W, H); None = the encoder's default
    fit_mode: str = "crop"  # how the source is fitted onto the coded frame
    fps: Fraction | None = None  # override the source frame rate
    baselines: tuple[str, ...] = ("x265", "vvenc")  # keys of metrics.baselines.BASELINES
    device: str = "auto"
    dtype: str = "auto"
    keep_streams: bool = False  # copy every coded stream into OUTDIR/streams/
    threads: int = DEFAULT_THREADS  # torch threads of each Promptus encode, as `promptus encode --threads`


@dataclass
class CompareResult:
    rows: list[dict]  # one per (codec, bitrate), keys ROW_FIELDS
    bd_rates: dict  # baseline -> metric -> BdRate
    document: dict  # what compare.json holds
    files: list[Path]  # what was written into OUTDIR


def row(codec: str, target: float, size: int, frames: int, rate: Fraction, result: EvalResult) -> dict:
    """A table row: the codec's real size and bitrate, and its mean scores."""
    return {
        "codec": codec,
        "target_kbps": round(target, 3),
        "achieved_kbps": round(achieved_kbps(size, frames, rate), 3),
        "bytes": size,
        "frames": frames,
        **result.summary(),
    }


def _promptus_frames(prx: Path, model):
    """Decode a .prx with the torch runtime, as `promptus decode` does: RGB uint8 (H, W, 3) frames."""
    from promptus_codec.container.reader import PrxReader
    from promptus_codec.decoder.driver import decode_frames
    from promptus_codec.decoder.torch_runtime import TorchRuntime

    with open(prx, "rb") as stream:
        reader = PrxReader(stream)
        runtime = TorchRuntime(model, reader.header.generation)
        for _, image in decode_frames(reader, runtime):
            yield image


def _write_reference(video, analysis, folder: Path) -> tuple[Path, Path]:
    """The coded frames, exactly as the encoder sees them: a PNG folder and a yuv420p y4m."""
    from promptus_codec.encoder.encode import coded_frames
    from promptus_codec.media import PngDirWriter, Y4MWriter

    pngs, y4m = folder / "reference", folder / "coded.y4m"
    w, h = analysis.coded_width, analysis.coded_height
    with (
        video.open() as source,
        PngDirWriter(str(pngs), w, h, analysis.frame_rate) as png_writer,
        Y4MWriter(str(y4m), w, h, analysis.frame_rate) as y4m_writer,
    ):
        for frame in coded_frames(source, w, h, analysis.geometry):
            png_writer.write(frame)
            y4m_writer.write(frame)
    return pngs, y4m


def run_compare(source: str, outdir: str, options: CompareOptions, log: Callable[[str], None] = print) -> CompareResult:
    """Encode, decode and score SOURCE with Promptus and every baseline; write OUTDIR."""
    from promptus_codec.encoder.encode import EncodeOptions, Encoder, VideoInput, analyse
    from promptus_codec.media import open_video
    from promptus_codec.metrics.plots import frame_strip, rd_plot
    from promptus_codec.metrics.perceptual import resolve_perceptual
    from promptus_codec.models.registry import load_model

    started = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    perceptual = resolve_perceptual(options.perceptual, options.preset)
    encode_options = EncodeOptions(
        preset=options.preset,
        size=options.size,
        fit_mode=options.fit_mode,
        fps=options.fps,
        perceptual=perceptual,
        fit_overrides=options.fit_overrides,
    )
    encode_options.fit_config()  # refuse an unknown preset before any work
    for codec in options.baselines:
        if codec not in BASELINES:
            raise UsageError(f"unknown baseline {codec!r}: choose from {', '.join(BASELINES)}")
    rows: list[dict] = []
    files: list[Path] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="promptus-compare-")))
        video = VideoInput(source, options.fps, stack)
        model = load_model(options.model, device=options.device, dtype=options.dtype, weights=options.weights)
        log(f"analysing {source} ({options.model}, perceptual loss: {perceptual})")
        analysis = analyse(video, model, encode_options)
        frames, rate = sum(analysis.scene_lengths), analysis.frame_rate
        scales = ms_ssim_scales(analysis.coded_width, analysis.coded_height)
        reference, y4m = _write_reference(video, analysis, work)
        scorer = Scorer(model.device)
        middle = frames // 2

        def score(codec: str, target: float, stream: Path, decoded) -> tuple:
            """Append ``codec``'s row; return its middle (source, decoded) frames."""
            with open_video(str(reference)) as ref:
                result, pair = measure(ref, decoded, scorer, frame_tolerance=0, capture=middle)
            rows.append(row(codec, target, stream.stat().st_size, frames, rate, result))
            log(f"  {codec}: {rows[-1]['achieved_kbps']:.2f} kb/s, PSNR-Y {fmt(rows[-1]['psnr_y'], '{:.2f}')} dB")
            return pair

        for target in options.bitrates_kbps:
            log(f"target {target:g} kb/s")
            prx = work / f"promptus-{target:g}k.prx"
            encoder = Encoder(model, replace(encode_options, target_kbps=target), threads=options.threads)
            encoder.encode(video, prx, analysis)
            source_mid, promptus_mid = score("promptus", target, prx, _promptus_frames(prx, model))
            achieved = rows[-1]["achieved_kbps"]
            panels = [("source", source_mid), (f"promptus {achieved:.1f} kb/s", promptus_mid)]
            streams = [prx]
            for codec in options.baselines:
                run = encode_baseline(codec, y4m, work, achieved)
                with open_video(str(run.decoded), fps=rate) as decoded:
                    _, mid = score(codec, achieved, run.stream, decoded)
                panels.append((f"{codec} {rows[-1]['achieved_kbps']:.1f} kb/s", mid))
                streams.append(run.stream)
            strip = out / f"strip_{target:g}k.png"
            frame_strip(panels, str(strip), f"frame {middle} of {Path(source).name} at {target:g} kb/s target")
            files.append(strip)
            if options.keep_streams:
                (out / "streams").mkdir(exist_ok=True)
                files += [Path(shutil.copy2(s, out / "streams" / s.name)) for s in streams]

    bd = bd_rates(rows, options.baselines)
    lpips_missing = dict(scorer.lpips_missing)
    document = {
        "source": str(source),
        "model": options.model,
        "preset": options.preset,
        "fit_overrides": dict(options.fit_overrides),
        "perceptual": perceptual,
        "fit": options.fit_mode,
        "threads": options.threads,
        "coded_size": [analysis.coded_width, analysis.coded_height],
        "frames": frames,
        "frame_rate": f"{rate.numerator}/{rate.denominator}",
        "ms_ssim_scales": scales,
        "severe_lpips_threshold": SEVERE_LPIPS,
        "lpips_missing": lpips_missing,
        "baselines": {codec: BASELINES[codec][0] for codec in options.baselines},
        "rows": rows,
        "bd_rate_percent": {
            codec: {m: {"percent": b.percent, "reason": b.reason} for m, b in metrics.items()}
            for codec, metrics in bd.items()
        },
        "bd_rate_note": "Promptus against each baseline: negative = Promptus needs fewer bits for the same quality",
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_json(str(out / "compare.json"), document)
    write_rows_csv(str(out / "compare.csv"), rows)
    rd_plot(
        rows,
        str(out / "rd.png"),
        f"{Path(source).name}, {analysis.coded_width}x{analysis.coded_height}, "
        f"Promptus {options.model} ({options.preset})",
        _lpips_note(lpips_missing),
        f"MS-SSIM ({scales} scales)",
    )
    files = [out / "compare.json", out / "compare.csv", out / "rd.png", *files]
    return CompareResult(rows, bd, document, files)


def bd_rates(rows: list[dict], baselines: tuple[str, ...]) -> dict:
    """baseline -> metric -> BdRate of Promptus against that baseline, on achieved bitrates."""

    def points(codec: str, metric: str) -> tuple[list, list]:
        mine = [r for r in rows if r["codec"] == codec]
        return [r["achieved_kbps"] for r in mine], [r[metric] for r in mine]

    return {
        codec: {
            metric: bd_rate(*points(codec, metric), *points("promptus", metric), higher, names=(codec, "promptus"))
            for metric, higher in BD_METRICS.items()
        }
        for codec in baselines
    }


def _lpips_note(missing: dict[str, str]) -> str | None:
    """What the LPIPS panel says when no LPIPS net could run."""
    from promptus_codec.metrics.perceptual import backbone_path

    if len(missing) < len(LPIPS_NETS):
        return None
    names = "\n".join(backbone_path(net).name for net in LPIPS_NETS)
    return f"LPIPS unavailable:\nbackbone weights missing\nin {backbone_path('alex').parent}:\n{names}"


def write_rows_csv(path: str, rows: list[dict]) -> None:
    """The comparison table; an empty cell is n/a."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows({k: "" if r[k] is None else r[k] for k in ROW_FIELDS} for r in rows)


def format_rows(rows: list[dict]) -> str:
    """The comparison as a text table."""
    header = ("codec", "target", "achieved", "bytes", "PSNR-Y", "PSNR-RGB", "MS-SSIM", "LPIPS-a", "LPIPS-v", "severe-a")
    table = [header] + [
        (
            r["codec"],
            f"{r['target_kbps']:.1f}",
            f"{r['achieved_kbps']:.2f}",
            str(r["bytes"]),
            fmt(r["psnr_y"], "{:.2f}"),
            fmt(r["psnr_rgb"], "{:.2f}"),
            fmt(r["ms_ssim"]),
            fmt(r["lpips_alex"]),
            fmt(r["lpips_vgg"]),
            fmt(None if r["severe_share_alex"] is None else r["severe_share_alex"] * 100, "{:.1f}%"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in table
    )
