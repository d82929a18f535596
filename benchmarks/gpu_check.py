"""GPU readiness check: decode and encode speed, memory, precision drift and determinism on one device.

    python benchmarks/gpu_check.py --device cuda --out $OUT/gpu                      # the H200 run, 420 s budget
    python benchmarks/gpu_check.py --device cpu --size 64 --model tiny --out /tmp/gc  # CPU smoke run, ~30 s

Never run on a GPU yet: this project has had none. The CPU mode runs every code path it can
and marks the CUDA-only ones skipped, with the reason.

Models (``--model``, comma-separated):
    sd-arch  SD 2.1 UNet + TAESD + SD VAE encoder built from the configs shipped in the package,
             RANDOM weights (seeded, built once on the CPU and copied, so every device and dtype
             gets the same numbers): the architecture's cost, not its pictures
    tiny     the built-in toy model (shipped weights)
    mini     the built-in trained model, when its weights are in the package

Sections of report.json, each {"status": "measured" | "skipped" | "failed", "reason": ..., "results": [...]},
every result row carrying its own status too:
    matmul_peak   a large matmul per dtype: the TFLOP/s ceiling the other figures are held against
    decode        one generation step (generate.GenerationStep) per model, size, batch, dtype and mode:
                  eager | cuda-graph (torch.cuda.CUDAGraph replay) | compile (torch.compile, last,
                  within --compile-budget); ms/frame, TFLOP/s, % of the matmul peak, peak memory
    encode_step   encoder/fit.py's fit_keyframe on K frames for --iterations iterations per dtype:
                  ms/iteration, peak memory, whether losses and gradients stayed finite
    encode_clip   a real encode (encoder/encode.py, as `promptus encode` runs it) of a 1 s synthetic
                  clip, then a decode of the stream: equal to the encoder's own reconstruction?
    drift         that stream decoded on CPU fp32 and on the device in fp32 / fp16 / bf16: PSNR per
                  frame and at the end of the keyframe chain, latent error along the chain
    determinism   the stream decoded twice on the device: the same bytes?

Timing: CUDA events after warm-up on CUDA, time.perf_counter on CPU. Peak memory:
torch.cuda.max_memory_allocated per row on CUDA; on CPU the process's RSS high-water mark so
far (not per row). The whole run keeps inside --budget seconds: before each row it checks the
time left against what a row of that kind took so far, and skips (with the reason) what does
not fit. report.json and report.md are rewritten after every section, so a killed run leaves
what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from the tree, installed or not

from promptus_codec.container.reader import PrxReader  # noqa: E402
from promptus_codec.container.records import ModelIdentity  # noqa: E402
from promptus_codec.decoder.driver import decode_frames  # noqa: E402
from promptus_codec.decoder.torch_runtime import TorchRuntime  # noqa: E402
from promptus_codec.encoder.encode import EncodeOptions, Encoder, analyse  # noqa: E402
from promptus_codec.encoder.fit import FitTask, PerceptualLoss, fit_keyframe  # noqa: E402
from promptus_codec.encoder.options import PRESETS  # noqa: E402
from promptus_codec.generate import GenerationStep, initial_noise_tensor  # noqa: E402
from promptus_codec.media.readers import VideoSource  # noqa: E402
from promptus_codec.metrics.quality import PSNR_CAP_DB, psnr  # noqa: E402
from promptus_codec.models import registry  # noqa: E402
from promptus_codec.models.device import resolve_dtype  # noqa: E402
from promptus_codec.prompt import Factors  # noqa: E402

MODELS = ("sd-arch", "tiny", "mini")
DTYPES = ("fp16", "bf16", "fp32")
MODES = ("eager", "cuda-graph", "compile")
SECTIONS = ("matmul_peak", "decode", "encode_step", "encode_clip", "drift", "determinism")
# Each section's share of --budget (seconds at the default 420 s); time a section leaves unused
# goes to the later ones. Compile rows run last, in what is left, at most --compile-budget.
SHARES = {"matmul_peak": 10, "decode": 110, "encode_step": 60, "encode_clip": 35, "drift": 40, "determinism": 15}
RANK = 8  # keyframe rank for fitting and the clip (the reference's sky_rank8 streams)


# ---------------------------------------------------------------------------
# Time, memory and budget
# ---------------------------------------------------------------------------


class Skip(Exception):
    """A row that cannot run here; its message is the reason."""


class OutOfTime(Exception):
    """Raised from a fitting callback to stop a fit at the budget's end."""


class Budget:
    """The run's deadline, a section's share of it, and an estimate per kind of row."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.deadline = self.start + seconds
        self.section_deadline = self.deadline
        self.took: dict[str, float] = {}  # kind of row -> the longest one so far (s)

    def left(self) -> float:
        return min(self.deadline, self.section_deadline) - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def open_section(self, seconds: float) -> None:
        self.section_deadline = min(self.deadline, time.perf_counter() + seconds)

    def check(self, kind: str, guess: float) -> None:
        """Raise Skip when a row of ``kind`` (guess: its cost before one has run) will not fit."""
        need, left = self.took.get(kind, guess), self.left()
        if left <= 0:
            raise Skip("over budget: no time left")
        if left < need:
            raise Skip(f"over budget: {left:.0f} s left, a {kind} row needs about {need:.0f} s")

    def record(self, kind: str, seconds: float) -> None:
        self.took[kind] = max(seconds, self.took.get(kind, 0.0))


class Device:
    """Synchronisation, timing and peak memory on one torch device."""

    def __init__(self, name: str):
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, fn, calls: int) -> float:
        """Wall time of ``calls`` back-to-back calls, on the GPU's clock when on CUDA."""
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def per_call(self, fn, warmup: int, min_time: float, max_calls: int = 200) -> tuple[float, int]:
        """Seconds per call after ``warmup`` calls, over enough calls to last ``min_time``."""
        for _ in range(warmup):
            fn()
        one = self.seconds(fn, 1)
        calls = int(min(max_calls, max(3, math.ceil(min_time / max(one, 1e-6)))))
        return self.seconds(fn, calls) / calls, calls

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float:
        """CUDA: peak allocated since reset_peak (MiB). CPU: the process's RSS high-water mark (MiB)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def sd_arch_cpu(seed: int):
    """The SD-Turbo architecture with random weights: (unet, vae, taesd) in fp32 on the CPU."""
    from promptus_codec.models.sd_turbo import TAESD, UNET, VAE, build_component

    torch.manual_seed(seed)
    return tuple(build_component(c, "cpu").eval().requires_grad_(False) for c in (UNET, VAE, TAESD))


def sd_arch_on(parts, device: torch.device, dtype: torch.dtype, seed: int):
    """Copies of ``parts`` as an SDTurbo model (the VAE stays fp32, as load_sd_turbo keeps it)."""
    from promptus_codec.models.sd_turbo import SDTurbo

    unet, vae, taesd = (copy.deepcopy(p) for p in parts)
    digests = (
        hashlib.sha256(f"sd-arch random seed {seed} {part}".encode()).digest() for part in ("unet", "taesd", "vae")
    )
    identity = ModelIdentity("sd-arch-random", *digests)
    return SDTurbo(unet.to(device, dtype), vae.to(device), taesd.to(device, dtype), identity, {}, device, dtype)


def mini_missing() -> str | None:
    """Why ``mini`` cannot be loaded here, or None when it can."""
    weights = ROOT / "promptus_codec" / "models" / "weights" / "mini.safetensors"
    if "mini" not in registry.MODEL_NAMES:
        return "the model registry has no 'mini' yet"
    if not weights.is_file():
        return f"{weights.relative_to(ROOT)} is not there yet"
    return None


class Models:
    """Each model by (name, device, dtype). One device model is kept at a time, so a row's peak
    memory holds its own weights only; CPU models (the drift reference) are kept as well."""

    def __init__(self, names: list[str], seed: int):
        self.seed = seed
        self.status = {}  # name -> {"status", "reason" | "build_s"}
        self._sd_parts = None
        self._cache: dict[tuple, object] = {}
        for name in names:
            missing = mini_missing() if name == "mini" else None
            self.status[name] = {"status": "skipped", "reason": missing} if missing else {"status": "available"}

    @property
    def names(self) -> list[str]:
        return [n for n, s in self.status.items() if s["status"] == "available"]

    def get(self, name: str, device: torch.device, dtype: torch.dtype):
        key = (name, device.type, dtype)
        if key not in self._cache:
            if device.type != "cpu":
                for old in [k for k in self._cache if k[1] != "cpu"]:
                    del self._cache[old]
                gc.collect()
                torch.cuda.empty_cache()
            started = time.perf_counter()
            self._cache[key] = self._build(name, device, dtype)
            self.status[name].setdefault("build_s", round(time.perf_counter() - started, 2))
            self.status[name].setdefault("parameters_m", round(parameter_count(self._cache[key]) / 1e6, 2))
        return self._cache[key]

    def _build(self, name: str, device: torch.device, dtype: torch.dtype):
        if name == "sd-arch":
            if self._sd_parts is None:
                self._sd_parts = sd_arch_cpu(self.seed)
            return sd_arch_on(self._sd_parts, device, dtype, self.seed)
        return registry.load_model(name, device=device, dtype=dtype)


def parameter_count(model) -> int:
    """Weights of the networks a decode or fit runs (denoiser and decoder)."""
    return sum(p.numel() for net in (model.unet, model.taesd) for p in net.parameters())


def meta_model(name: str):
    """``name`` with its weights on "meta": counts FLOPs without memory or arithmetic."""
    if name == "sd-arch":
        from promptus_codec.models.sd_turbo import TAESD, UNET, SDTurbo, build_component

        unet, taesd = build_component(UNET), build_component(TAESD)
        return SDTurbo(unet, None, taesd, None, {}, torch.device("meta"), torch.float32)
    from promptus_codec.models import mini, tiny

    config = (tiny.CONFIG_FILE if name == "tiny" else mini.CONFIG_FILE).read_text()
    parts = tiny.build_parts(json.loads(config)["components"], device="meta")
    return tiny.TinyModel(parts["unet"], parts["taesd"], parts["vae"])


def flops_per_frame(name: str, size: int) -> float:
    """FLOPs of one generation step at batch 1 (UNet + decoder), counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    generator = GenerationStep(meta_model(name))
    z, noise, prompts = step_inputs(1, size, torch.device("meta"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(z, noise, prompts)
    return float(counter.get_total_flops())


def step_inputs(batch: int, size: int, device: torch.device, seed: int = 0):
    """z_prev, noise (1, 4, size/8, size/8) and prompts (batch, 77, 1024), float32, seeded."""
    g = torch.Generator().manual_seed(seed)
    latent = (1, 4, size // 8, size // 8)
    tensors = (
        torch.randn(latent, generator=g),
        torch.randn(latent, generator=g),
        torch.randn(batch, 77, 1024, generator=g),
    )
    return tuple(t.to(device) for t in tensors)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the sections share: options, device, models, budget and the report so far."""

    args: argparse.Namespace
    device: Device
    models: Models
    budget: Budget
    report: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    flops: dict = field(default_factory=dict)  # (model, size) -> FLOPs per frame
    streams_dir: str = ""  # a temporary folder for the encode_clip streams
    streams: dict = field(default_factory=dict)  # model -> path of its encode_clip stream
    references: dict = field(default_factory=dict)  # model -> its CPU fp32 decode (drift)
    graph_broken: str | None = None  # set when a CUDA-graph capture failed: later ones are skipped
    compile_s: list = field(default_factory=list)  # torch.compile times so far

    def check_dtype(self, dtype: str) -> None:
        """On the CPU fp16 runs only when --dtype names it: it has no fast CPU kernels."""
        if dtype == "fp16" and not self.device.cuda and not self.args.dtype_given:
            raise Skip(
                "fp16 on CPU is slow (here a 1024² matmul ran at 1 GFLOP/s, a fitting iteration of tiny "
                "at 64² took 9 s): name it in --dtype to run it"
            )

    def compile_fits(self) -> bool:
        """Whether one more compile, as long as the longest so far, stays inside --compile-budget."""
        return sum(self.compile_s) + max(self.compile_s, default=0.0) <= self.args.compile_budget

    def row(self, section: str, kind: str, guess: float, fn, **labels) -> dict:
        """Run one row: skipped when it does not fit the budget, failed (with the error) when it raises."""
        started = time.perf_counter()
        try:
            self.budget.check(kind, guess)
            result = {**labels, "status": "measured", **fn()}
            self.budget.record(kind, time.perf_counter() - started)
        except Skip as why:
            result = {**labels, "status": "skipped", "reason": str(why)}
        except Exception as exc:  # a GPU run is rare: record the failure and go on
            self.device.free()
            result = {
                **labels,
                "status": "failed",
                "reason": " ".join(f"{type(exc).__name__}: {exc}".split())[:300],
                "traceback": traceback.format_exc(limit=-4)[-2000:],
            }
        if result["status"] != "measured":
            self.skipped.append(f"{section} {' '.join(str(v) for v in labels.values())}: {result['reason']}")
        print(f"[{self.budget.elapsed():6.1f} s] {section:<12} {describe_row(result)}", flush=True)
        return result

    def section(self, name: str, results: list[dict]) -> None:
        """Store a section: measured if any row was, else skipped/failed with the rows' reasons."""
        statuses = {r["status"] for r in results}
        if "measured" in statuses:
            entry = {"status": "measured"}
        else:
            status = "failed" if "failed" in statuses else "skipped"
            reasons = sorted({r["reason"] for r in results if r.get("reason")})
            entry = {"status": status, "reason": "; ".join(reasons) or "nothing to run"}
            if not results:
                self.skipped.append(f"{name}: {entry['reason']}")
        self.report["sections"][name] = {**entry, "results": results}
        self.write()

    def write(self) -> None:
        out = Path(self.args.out)
        self.report["models"] = self.models.status
        self.report["skipped"] = self.skipped
        self.report["meta"]["elapsed_s"] = round(self.budget.elapsed(), 1)
        (out / "report.json").write_text(json.dumps(finite(self.report), indent=1, allow_nan=False) + "\n")
        (out / "report.md").write_text(markdown(self.report))


def describe_row(row: dict) -> str:
    labels = " ".join(f"{v}" for k, v in row.items() if k in ("model", "dtype", "size", "batch", "mode", "target"))
    if row["status"] != "measured":
        return f"{labels}: {row['status']}: {row['reason']}"
    shown = {k: v for k, v in row.items() if isinstance(v, (int, float, bool)) and k not in ("size", "batch")}
    return f"{labels}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(shown.items())[:7]
    )


def finite(value):
    """The report with NaN and infinities as null (strict JSON), floats rounded for reading."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def machine(device: Device) -> dict:
    """What the figures were measured on."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device.torch),
        "peak_memory": "torch.cuda.max_memory_allocated per row"
        if device.cuda
        else "process RSS high-water mark so far (ru_maxrss), not per row",
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.cuda:
        props = torch.cuda.get_device_properties(device.torch)
        info.update(
            gpu=props.name,
            sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def matmul_peak(run: Run) -> list[dict]:
    """TFLOP/s of an n x n matmul per dtype (default precision flags), the ceiling for % of peak."""
    results = []
    for name in run.args.dtype:

        def measure(name=name):
            run.check_dtype(name)
            dtype = resolve_dtype(name)
            n = run.args.matmul_n or (8192 if run.device.cuda else cpu_matmul_size(run, dtype))
            a, b = (torch.randn(n, n, device=run.device.torch).to(dtype) for _ in range(2))
            seconds, calls = run.device.per_call(lambda: a @ b, warmup=3, min_time=run.args.min_time / 2)
            return {"n": n, "calls": calls, "tflops": 2 * n**3 / seconds / 1e12}

        results.append(run.row("matmul_peak", "matmul", 5, measure, dtype=name))
    return results


def cpu_matmul_size(run: Run, dtype: torch.dtype, longest_call_s: float = 0.05) -> int:
    """The largest n of 256, 512, 1024 whose n x n matmul takes under ``longest_call_s`` here.

    CPUs differ by 100x in bf16: with AMX a 1024² bf16 matmul takes ~1 ms, without native bf16
    kernels (an older EPYC) it ran at 0.8 GFLOP/s, 2.5 s a call, and the row overran its share.
    """
    n = 256
    while n < 1024:
        a = torch.randn(n, n).to(dtype)
        a @ a  # the first call sets up kernels
        fastest = min(run.device.seconds(lambda: a @ a, 1) for _ in range(3))  # others share the machine
        if fastest * 8 > longest_call_s:  # doubling n costs 8x
            break
        n *= 2
    return n


def peak_tflops(run: Run, dtype: str) -> float | None:
    for row in run.report["sections"].get("matmul_peak", {}).get("results", []):
        if row["dtype"] == dtype and row["status"] == "measured":
            return row["tflops"]
    return None


def decode_rows(run: Run, modes: tuple[str, ...]) -> list[dict]:
    """One row per (model, dtype, size, batch, mode) of ``modes``; compile rows in priority order."""
    rows, a = [], run.args
    sizes, batches = sorted(a.size, reverse=True), sorted(a.batch, reverse=True)
    for m, name in enumerate(run.models.names):
        for d, dtype in enumerate(a.dtype):
            for size in a.size:
                for batch in a.batch:
                    for mode in modes:
                        # compile: each model's first dtype at its largest size and batch first
                        order = (d, sizes.index(size), batches.index(batch), m) if mode == "compile" else ()
                        rows.append((order, dict(model=name, dtype=dtype, size=size, batch=batch, mode=mode)))
    return [labels for _, labels in sorted(rows, key=lambda r: r[0])]  # stable: others keep their order


def decode(run: Run, modes: tuple[str, ...]) -> list[dict]:
    """Time the generation step for every row; see decode_step for the modes."""
    results = []
    for labels in decode_rows(run, modes):
        kind = f"decode {labels['mode']} {labels['model']} {labels['size']}"
        guess = {"eager": 5, "cuda-graph": 8, "compile": 60}[labels["mode"]]
        results.append(run.row("decode", kind, guess, lambda labels=labels: decode_step(run, **labels), **labels))
    return results


def decode_step(run: Run, model: str, dtype: str, size: int, batch: int, mode: str) -> dict:
    """ms/frame of one generation step (z_prev, noise, prompts on the device -> latents, images)."""
    device = run.device
    run.check_dtype(dtype)
    if mode != "eager" and not device.cuda:
        raise Skip(
            f"{mode} is measured on CUDA only"
            + (
                ""
                if mode == "cuda-graph"
                else " (on CPU torch.compile takes minutes per shape: benchmarks/decode.py measures it)"
            )
        )
    if mode == "compile" and not run.compile_fits():
        raise Skip(
            f"torch.compile budget: {sum(run.compile_s):.0f} of {run.args.compile_budget:.0f} s spent, "
            f"the longest compile took {max(run.compile_s):.0f} s"
        )
    if mode == "cuda-graph" and run.graph_broken:
        raise Skip(f"an earlier CUDA-graph capture failed: {run.graph_broken}")
    net = run.models.get(model, device.torch, resolve_dtype(dtype))
    if (model, size) not in run.flops:
        run.flops[(model, size)] = flops_per_frame(model, size)
    generator = GenerationStep(net).eval()
    inputs = step_inputs(batch, size, device.torch)
    extra = {}
    with torch.inference_mode():
        device.reset_peak()
        if mode == "eager":
            step = lambda: generator(*inputs)  # noqa: E731
        elif mode == "cuda-graph":
            step, extra = graph_step(run, generator, inputs)
        else:
            step, extra = compiled_step(run, generator, inputs)
        seconds, calls = device.per_call(step, warmup=3, min_time=run.args.min_time)
        peak = device.peak_mb()
        latents, images = step()
        finite_out = bool(torch.isfinite(latents).all() and torch.isfinite(images).all())
    flops = run.flops[(model, size)] * batch
    roof = peak_tflops(run, dtype)
    tflops = flops / seconds / 1e12
    return {
        "ms_per_frame": seconds * 1e3 / batch,
        "frames_per_s": batch / seconds,
        "gflop_per_frame": flops / batch / 1e9,
        "tflops": tflops,
        "pct_of_matmul_peak": None if roof is None else 100 * tflops / roof,
        "peak_mem_mb": peak,
        "calls": calls,
        "output_finite": finite_out,
        **extra,
    }


class DeviceTimestep:
    """A model whose denoise gets the timestep as a device tensor, not a Python int.

    Given an int, diffusers' UNet builds the timestep tensor on the GPU from host memory on every
    call, a copy that synchronises with the host, which stream capture does not allow.
    """

    def __init__(self, model, timestep: int):
        self._model = model
        self._timestep = torch.tensor(timestep, dtype=torch.int64, device=model.device)  # 0-d, as diffusers takes it

    def __getattr__(self, name):
        return getattr(self._model, name)

    def denoise(self, noisy, prompts, timestep):
        return self._model.denoise(noisy, prompts, self._timestep)


def host_sync(generator: GenerationStep, inputs) -> str | None:
    """The first host synchronisation in one step (which breaks CUDA-graph capture), or None."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        generator(*inputs)
        return None
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def graph_step(run: Run, generator: GenerationStep, inputs):
    """The step captured once in a torch.cuda.CUDAGraph; returns (replay, facts about the capture)."""
    eager_latents, eager_images = generator(*inputs)
    facts = {"host_sync_in_step": host_sync(generator, inputs)}
    if facts["host_sync_in_step"]:
        generator = GenerationStep(DeviceTimestep(generator.model, generator.constants.timestep), generator.constants)
        still = host_sync(generator, inputs)
        if still:
            raise Skip(f"the step synchronises with the host even with the timestep on the device: {still}")
    facts["timestep_on_device"] = bool(facts["host_sync_in_step"])
    side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graphs recommends
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            generator(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            latents, images = generator(*inputs)  # static outputs, overwritten by every replay
    except Exception as exc:
        run.graph_broken = f"{type(exc).__name__}: {exc}"[:300]
        raise
    graph.replay()
    facts["max_abs_diff_vs_eager"] = max(
        (latents - eager_latents).abs().max().item(), (images - eager_images).abs().max().item()
    )

    def replay():
        graph.replay()
        return latents, images

    return replay, facts


def compiled_step(run: Run, generator: GenerationStep, inputs):
    """The step through torch.compile (inductor, default mode); the first call's time is compile_s."""
    torch._dynamo.reset()  # a fresh cache per shape: compile time is this row's, not a recompile limit
    compiled = torch.compile(generator)
    started = time.perf_counter()
    compiled(*inputs)
    run.device.sync()
    compile_s = time.perf_counter() - started
    run.compile_s.append(compile_s)
    return (lambda: compiled(*inputs)), {"compile_s": compile_s}


def synthetic_frames(count: int, size: int) -> np.ndarray:
    """(count, size, size, 3) uint8: smooth colour waves drifting from frame to frame."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.arange(count, dtype=np.float32)[:, None, None] / 30
    channels = (np.sin(2 * np.pi * (x + t)), np.sin(2 * np.pi * (2 * y - t)), np.cos(2 * np.pi * (x + y + 0.5 * t)))
    return np.rint(127.5 + 127.5 * np.stack(channels, -1)).astype(np.uint8)


def encode_step(run: Run) -> list[dict]:
    """fit_keyframe on K frames with the previous keyframe given (interpolation-aware: K+1 frames a pass)."""
    results = []
    for name in run.models.names:
        for dtype in run.args.dtype:
            kind = f"encode_step {name}"
            results.append(
                run.row(
                    "encode_step",
                    kind,
                    10,
                    lambda name=name, dtype=dtype: fit_check(run, name, dtype),
                    model=name,
                    dtype=dtype,
                    size=run.args.encode_size,
                    batch=run.args.frames,
                )
            )
    return results


def fit_check(run: Run, name: str, dtype: str) -> dict:
    """--iterations iterations of the real fitting code: time per iteration, peak memory, finiteness."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    device, a = run.device, run.args
    run.check_dtype(dtype)
    model = run.models.get(name, device.torch, resolve_dtype(dtype))
    generator = GenerationStep(model)
    frames = synthetic_frames(a.frames + 1, a.encode_size)  # frame 0 is the previous keyframe's
    targets = torch.from_numpy(frames[1:]).to(device.torch).permute(0, 3, 1, 2).float() / 255  # (K, 3, S, S)
    with torch.no_grad():
        scene = torch.from_numpy(frames[:1]).to(device.torch).permute(0, 3, 1, 2).float() / 255
        z_prev = model.encode_image(scene).float()  # (1, 4, S/8, S/8)
    noise = initial_noise_tensor(generator.constants, tuple(z_prev.shape[1:]), device.torch)
    g = torch.Generator().manual_seed(a.seed)
    u, v = torch.randn(77, RANK, generator=g), torch.randn(RANK, 1024, generator=g)  # (m, r), (r, n)
    previous = Factors(0, u.to(device.torch), v.to(device.torch))  # keyframe 0, as stored
    # The batched step (K + 1 frames a pass) is the one whose device cost this times; fast itself now
    # steps per frame, 2 frames a pass, K steps an iteration.
    config = replace(PRESETS["fast"], iterations=a.iterations, early_stop_patience=0, init="random", frame_steps=False)
    stamps, losses, grad_norms = [], [], []
    deadline = time.perf_counter() + run.budget.left()

    def on_step(step, value, best):
        stamps.append(time.perf_counter())  # after loss.item(): the GPU is done with the step
        losses.append(value)
        if stamps[-1] > deadline:
            raise OutOfTime(f"budget, after {len(losses)} iterations")

    def before_optimizer_step(optimizer, args, kwargs):  # device tensors: no sync inside the loop
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    hook = register_optimizer_step_pre_hook(before_optimizer_step)
    device.reset_peak()
    stopped = None
    try:
        task = FitTask(targets, z_prev, noise, frame_index=a.frames, rank=RANK, previous=previous)
        fit_keyframe(generator, task, config, PerceptualLoss(None), on_step=on_step)
    except OutOfTime as exc:
        stopped = str(exc)
    except (ValueError, RuntimeError) as exc:  # a non-finite iterate can stop the fit: that is a finding
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        stopped = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        hook.remove()
    peak = device.peak_mb()
    norms = torch.stack(grad_norms).float().cpu().numpy() if grad_norms else np.zeros(0)
    if len(stamps) < 4 and stopped is None:
        raise Skip(f"{len(stamps)} iterations ran: need at least 4 to time one")
    steps = np.diff(stamps)[2:] if len(stamps) >= 4 else np.zeros(0)  # the first iterations warm up
    return {
        "iterations": len(losses),
        "ms_per_iteration": float(np.median(steps)) * 1e3 if len(steps) else None,
        "frames_per_pass": a.frames + 1,
        "peak_mem_mb": peak,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_min": min(losses) if losses else None,
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "grads_finite": bool(np.isfinite(norms).all()),
        "grad_norm_min": float(norms.min()) if len(norms) else None,
        "grad_norm_max": float(norms.max()) if len(norms) else None,
        "zero_grad_steps": int((norms == 0).sum()),
        "stopped_by": stopped,
    }


class MemoryVideo:
    """Frames held in memory, opened the way encoder.encode.VideoInput opens a file (no PyAV needed)."""

    class Source(VideoSource):
        def __init__(self, frames: np.ndarray, fps: Fraction):
            super().__init__("synthetic", frames.shape[2], frames.shape[1], fps, len(frames))
            self.array = frames

        def _frames(self):
            yield from self.array  # (H, W, 3) uint8

    def __init__(self, frames: np.ndarray, fps: Fraction):
        self.path, self.fps, self.frames = "synthetic", fps, frames

    def open(self) -> VideoSource:
        return self.Source(self.frames, self.fps)


class FrameList(list):
    """Collects the encoder's own reconstruction (what Encoder.recon's frame writer receives)."""

    write = list.append


class RecordingRuntime:
    """A runtime that keeps the last latent of every generation call: the keyframe chain."""

    def __init__(self, runtime: TorchRuntime):
        self.runtime, self.name, self.chain = runtime, runtime.name, []

    def identity(self):
        return self.runtime.identity()

    def generate(self, z_prev, noise, prompts):
        latents, images = self.runtime.generate(z_prev, noise, prompts)
        self.chain.append(latents[-1].copy())  # (C, h, w)
        return latents, images


def decode_stream(path: Path, model) -> tuple[np.ndarray, np.ndarray]:
    """The stream decoded as `promptus decode` does: frames (T, H, W, 3) uint8, chain latents (N, C, h, w)."""
    runtime = RecordingRuntime(TorchRuntime(model, model.spec.generation))
    with open(path, "rb") as stream:
        frames = [image for _, image in decode_frames(PrxReader(stream), runtime)]
    return np.stack(frames), np.stack(runtime.chain)


def encode_clip(run: Run) -> list[dict]:
    results = []
    for name in run.models.names:
        results.append(
            run.row(
                "encode_clip",
                f"encode_clip {name}",
                20,
                lambda name=name: clip(run, name),
                model=name,
                dtype=run.args.clip_dtype,
                size=run.args.clip_size,
            )
        )
    return results


def clip(run: Run, name: str) -> dict:
    """A 1-second synthetic clip through Encoder, as the CLI drives it; then decoded and compared."""
    a, device = run.args, run.device
    model = run.models.get(name, device.torch, resolve_dtype(a.clip_dtype, device.torch))
    frames = synthetic_frames(a.clip_frames, a.clip_size)
    video = MemoryVideo(frames, Fraction(a.clip_frames))  # 1 s
    # one scene (no cut detection: random weights would cut anywhere), rank and K forced, MSE only
    fewer = (
        ()
        if a.clip_iterations is None
        else (("first_iterations", a.clip_iterations), ("iterations", a.clip_iterations))
    )
    options = EncodeOptions(
        rank=RANK,
        interval=a.frames,
        preset="draft",
        size=(a.clip_size, a.clip_size),
        refresh_s=0,
        scene_detector="latent",
        cut_threshold=1e9,
        perceptual="none",
        fit_overrides=fewer,
    )
    encoder = Encoder(model, options, recon=FrameList())
    device.reset_peak()
    started = time.perf_counter()
    analysis = analyse(video, model, options)
    analysed = time.perf_counter()
    path = Path(run.streams_dir) / f"clip-{name}.prx"
    report = encoder.encode(video, path, analysis)
    encoded = time.perf_counter()
    peak = device.peak_mb()
    decoded, _ = decode_stream(path, model)
    decode_s = time.perf_counter() - encoded
    run.streams[name] = path
    recon = np.stack(encoder.recon)
    fit = options.fit_config()
    return {
        "frames": report.frames,
        "keyframes": report.keyframes,
        "interval": report.interval,
        "rank": RANK,
        "fit_iterations": [fit.first_iterations, fit.iterations],
        "bytes": report.bytes,
        "kbps": report.achieved_kbps,
        "analyse_s": analysed - started,
        "encode_s": encoded - analysed,
        "decode_s": decode_s,
        "mean_psnr_db": report.mean_psnr_db,
        "peak_mem_mb": peak,
        "decode_equals_recon": bool(np.array_equal(decoded, recon)),
    }


def drift_targets(run: Run) -> list[tuple[str, str]]:
    """(device, dtype) decodes held against the CPU fp32 one; on a CPU-only run, CPU bf16 stands in."""
    targets = [("cuda", d) for d in ("fp32", "fp16", "bf16") if d in run.args.dtype]
    return targets if run.device.cuda else [("cpu", "bf16")] + targets


def drift(run: Run) -> list[dict]:
    return [
        run.row(
            "drift",
            f"drift {name}",
            20,
            lambda n=name, w=where, d=dtype: drift_one(run, n, w, d),
            model=name,
            target=f"{where} {dtype}",
            size=run.args.clip_size,
        )
        for name in run.models.names
        for where, dtype in drift_targets(run)
    ]


def clip_stream(run: Run, name: str) -> Path:
    if name not in run.streams:
        raise Skip("no stream: encode_clip did not measure")
    return run.streams[name]


def drift_one(run: Run, name: str, where: str, dtype: str) -> dict:
    """PSNR of a (device, dtype) decode against the CPU fp32 decode, per frame and along the chain."""
    if where == "cuda" and not run.device.cuda:
        raise Skip("needs CUDA")
    path = clip_stream(run, name)
    if name not in run.references:
        run.references[name] = decode_stream(path, run.models.get(name, torch.device("cpu"), torch.float32))
    ref_frames, ref_chain = run.references[name]
    frames, chain = decode_stream(path, run.models.get(name, torch.device(where), resolve_dtype(dtype)))
    per_frame = [psnr(r, f) for r, f in zip(ref_frames, frames)]
    chain_error = np.abs(chain - ref_chain).reshape(len(chain), -1).max(1) / np.abs(ref_chain).reshape(
        len(chain), -1
    ).max(1)
    return {
        "frames": len(frames),
        "psnr_db_per_frame": per_frame,
        "psnr_db_min": min(per_frame),
        "psnr_db_mean": float(np.mean(per_frame)),
        "psnr_db_last_frame": per_frame[-1],
        "identical_frames": sum(p == PSNR_CAP_DB for p in per_frame),
        "max_level_diff": int(np.abs(frames.astype(np.int16) - ref_frames).max()),
        "chain_rel_error": chain_error.tolist(),
        "chain_rel_error_last": float(chain_error[-1]),
    }


def determinism(run: Run) -> list[dict]:
    return [
        run.row(
            "determinism",
            f"determinism {name}",
            10,
            lambda n=name, d=dtype: twice(run, n, d),
            model=name,
            dtype=dtype,
            size=run.args.clip_size,
        )
        for name in run.models.names
        for dtype in dict.fromkeys([run.args.clip_dtype, "fp32"])
    ]


def twice(run: Run, name: str, dtype: str) -> dict:
    """Decode the clip stream twice on the device with one model: equal frame and latent bytes?"""
    path = clip_stream(run, name)
    model = run.models.get(name, run.device.torch, resolve_dtype(dtype, run.device.torch))
    (f1, c1), (f2, c2) = (decode_stream(path, model) for _ in range(2))
    return {
        "device": str(run.device.torch),
        "frames": len(f1),
        "identical_frames": bool(f1.tobytes() == f2.tobytes()),
        "identical_latents": bool(c1.tobytes() == c2.tobytes()),
        "frames_differing": int((f1 != f2).reshape(len(f1), -1).any(1).sum()),
    }


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """A short human summary of report.json."""
    meta, sections = report["meta"], report["sections"]
    gpu = f"{meta.get('gpu', meta['device'])}, torch {meta['torch']}"
    lines = [
        f"# GPU check: {gpu}",
        "",
        f"{meta['elapsed_s']} s of a {meta['budget_s']} s budget. "
        "sd-arch = SD-Turbo architecture with random weights. Peak memory: " + meta["peak_memory"] + ".",
        "",
    ]
    for name in SECTIONS:
        entry = sections.get(name)
        if entry is None:
            continue
        lines += [f"## {name}: {entry['status']}" + (f" ({entry['reason']})" if entry.get("reason") else ""), ""]
        rows = [r for r in entry["results"] if r["status"] == "measured"]
        if rows:
            lines += table(name, rows)
    if report["skipped"]:
        by_reason: dict[str, list[str]] = {}
        for line in report["skipped"]:
            what, _, why = line.partition(": ")
            by_reason.setdefault(why, []).append(what)
        lines += ["## Skipped or failed", ""]
        lines += [f"- {why}: {len(whats)} × ({'; '.join(whats)})" for why, whats in by_reason.items()] + [""]
    return "\n".join(lines)


COLUMNS = {
    "matmul_peak": ("dtype", "n", "tflops"),
    "decode": (
        "model",
        "size",
        "batch",
        "dtype",
        "mode",
        "ms_per_frame",
        "frames_per_s",
        "tflops",
        "pct_of_matmul_peak",
        "peak_mem_mb",
        "compile_s",
    ),
    "encode_step": (
        "model",
        "dtype",
        "size",
        "batch",
        "ms_per_iteration",
        "peak_mem_mb",
        "losses_finite",
        "grads_finite",
        "zero_grad_steps",
        "loss_first",
        "loss_last",
        "stopped_by",
    ),
    "encode_clip": (
        "model",
        "dtype",
        "size",
        "frames",
        "keyframes",
        "kbps",
        "encode_s",
        "decode_s",
        "peak_mem_mb",
        "decode_equals_recon",
    ),
    "drift": (
        "model",
        "target",
        "size",
        "psnr_db_min",
        "psnr_db_mean",
        "psnr_db_last_frame",
        "max_level_diff",
        "chain_rel_error_last",
    ),
    "determinism": ("model", "dtype", "device", "identical_frames", "identical_latents", "frames_differing"),
}


def table(section: str, rows: list[dict]) -> list[str]:
    columns = [c for c in COLUMNS[section] if any(r.get(c) is not None for r in rows)]

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    return (
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
        + [""]
    )


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    def choices(allowed):
        def parse(text: str) -> list[str]:
            names = [x.strip() for x in text.split(",") if x.strip()]
            bad = [n for n in names if n not in allowed]
            if bad or not names:
                raise argparse.ArgumentTypeError(f"{','.join(bad) or text!r}: choose from {','.join(allowed)}")
            return names

        return parse

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.add_argument("--model", type=choices(MODELS), default=list(MODELS), help="comma-separated: sd-arch,tiny,mini")
    p.add_argument("--size", type=ints, default=[512, 256], help="decode sizes (square, multiples of 64)")
    p.add_argument("--batch", type=ints, default=[1, 10], help="decode batch sizes")
    p.add_argument(
        "--dtype", type=choices(DTYPES), help="fp16,bf16,fp32 (the default; on CPU fp16 is skipped unless given)"
    )
    p.add_argument("--modes", type=choices(MODES), default=list(MODES), help="eager,cuda-graph,compile")
    p.add_argument("--frames", type=int, default=10, help="K: frames per fitting pass and the clip's keyframe interval")
    p.add_argument("--iterations", type=int, help="fitting iterations per dtype in encode_step (default 50; 10 on CPU)")
    p.add_argument("--encode-size", type=int, help="encode_step size (default: the largest --size)")
    p.add_argument(
        "--clip-size", type=int, help="encode_clip / drift / determinism size (default: the smallest --size)"
    )
    p.add_argument("--clip-frames", type=int, default=30, help="frames of the 1-second clip (its frame rate)")
    p.add_argument("--clip-dtype", default="auto", help="dtype of the clip encode (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument(
        "--clip-iterations",
        type=int,
        help="fitting iterations per keyframe of the clip (default: the draft preset's 40 / 15; 3 on CPU)",
    )
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    p.add_argument("--compile-budget", type=float, default=180, help="seconds of torch.compile at most")
    p.add_argument(
        "--min-time", type=float, default=None, help="seconds timed per decode row (default 0.5 on CUDA, 0.3 on CPU)"
    )
    p.add_argument(
        "--matmul-n",
        type=int,
        default=None,
        help="matmul size for the peak (default 8192 on CUDA; on CPU the largest of 256..1024 under 50 ms a call)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of sd-arch's random weights and the inputs")
    args = p.parse_args(argv)
    args.dtype_given, args.dtype = args.dtype is not None, args.dtype or list(DTYPES)
    args.encode_size = args.encode_size or max(args.size)
    args.clip_size = args.clip_size or min(args.size)
    cuda = args.device == "cuda"
    args.min_time = args.min_time or (0.5 if cuda else 0.3)
    args.iterations = args.iterations or (50 if cuda else 10)
    if args.clip_iterations is None and not cuda:
        args.clip_iterations = 3
    if args.clip_dtype == "auto":
        args.clip_dtype = "fp16" if args.device == "cuda" else "fp32"
    for size in args.size + [args.encode_size, args.clip_size]:
        if size % 64:
            p.error(f"size {size} is not a multiple of 64")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, budget = Device(args.device), Budget(args.budget)
    run = Run(args, device, Models(args.model, args.seed), budget)
    run.report = {
        "meta": {
            **machine(device),
            "budget_s": args.budget,
            "compile_budget_s": args.compile_budget,
            "argv": sys.argv[1:] if argv is None else list(argv),
        },
        "sections": {},
    }
    scale = args.budget / 420
    first_modes = tuple(m for m in args.modes if m != "compile")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as streams:
        run.streams_dir = streams
        for name, work in (
            ("matmul_peak", lambda: matmul_peak(run)),
            ("decode", lambda: decode(run, first_modes)),
            ("encode_step", lambda: encode_step(run)),
            ("encode_clip", lambda: encode_clip(run)),
            ("drift", lambda: drift(run)),
            ("determinism", lambda: determinism(run)),
        ):
            budget.open_section(SHARES[name] * scale)
            run.section(name, work())
        if "compile" in args.modes:  # last: whatever time is left, at most --compile-budget
            budget.open_section(args.budget)
            run.section("decode", run.report["sections"]["decode"]["results"] + decode(run, ("compile",)))
    run.write()
    print(f"\n{budget.elapsed():.0f} s; wrote {out / 'report.json'} and {out / 'report.md'}")
    if run.skipped:
        print(f"skipped or failed ({len(run.skipped)}):")
        for line in run.skipped:
            print(f"  {line}")
    return run.report


if __name__ == "__main__":
    main()
