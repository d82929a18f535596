"""Decode throughput per backend, batch and model, against this machine's measured fp32 matmul peak.

    python benchmarks/decode.py --quick          # tiny model + SD-Turbo architecture at 256x256, batch 1
    python benchmarks/decode.py                  # tiny + SD-arch 256x256, batch 1 and K (K=10)
    python benchmarks/decode.py --sizes 256 512  # also 512x512 (minutes per configuration on 2 cores)

Every figure is one generation step through a decoder runtime (numpy in, numpy out), as
`promptus decode` runs it:

    torch-eager     decoder/torch_runtime.py
    torch-compile   the same, its GenerationStep through torch.compile with inductor freezing
    onnx-cpu        decoder/onnx_runtime.py on a graph from engine/export.py (exported once, cached)

Models: "tiny" (the shipped weights) and "sd-arch" (SD 2.1 UNet + TAESD built from the shipped
configs with RANDOM weights: the architecture's cost, not its pictures). Each (model, size,
backend, batch) runs in its own subprocess, so its peak RSS (VmHWM) is its own; the ONNX one
never imports torch. Two warm-up calls come first (compiling; ONNX Runtime's arena takes two runs
to stop page-faulting). FLOPs per frame are counted once per (model, size) with FlopCounterMode on
meta tensors. The peak is the best of a large matmul loop with torch (MKL) and with onnxruntime
(MLAS), measured at the start and the end of the run: on this project's AMD CPUs MLAS reaches
about 1.9x MKL's rate. "cores" is CPU time over wall time while timing; below the core count,
other processes took part of the CPU (the load average is printed too). Prints a table and
writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch-eager", "torch-compile", "onnx-cpu")
RANDOM_SEED = 0  # sd-arch weights: the ONNX graphs of a seed are exported once and reused


# ---------------------------------------------------------------------------
# Workers (one subprocess each)
# ---------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_model(name: str, device: str = "cpu"):
    """The tiny model, or the SD-Turbo architecture with random weights (seeded), in fp32."""
    import hashlib

    import torch

    if name == "tiny":
        from promptus_codec.models.tiny import load_tiny

        return load_tiny(device=device, dtype="fp32") if device != "meta" else _meta_tiny()
    from promptus_codec.container.records import ModelIdentity
    from promptus_codec.models.sd_turbo import TAESD, UNET, SDTurbo, build_component

    torch.manual_seed(RANDOM_SEED)
    unet, taesd = (build_component(c, device).eval().requires_grad_(False) for c in (UNET, TAESD))
    digests = (
        hashlib.sha256(f"random seed {RANDOM_SEED} {part}".encode()).digest() for part in ("unet", "taesd", "vae")
    )
    identity = ModelIdentity("sd-arch-random", *digests)
    return SDTurbo(unet, None, taesd, identity, {}, torch.device(device), torch.float32)


def _meta_tiny():
    from promptus_codec.models.tiny import CONFIG_FILE, TinyModel, build_parts

    parts = build_parts(json.loads(CONFIG_FILE.read_text())["components"], device="meta")
    return TinyModel(parts["unet"], parts["taesd"], parts["vae"])


def random_inputs(batch: int, size: int):
    """z_prev, noise (1, 4, size/8, size/8) and prompts (batch, 77, 1024), float32: SD 2.x shapes (both models)."""
    import numpy as np

    rng = np.random.default_rng(0)
    latent = (1, 4, size // 8, size // 8)
    return (
        rng.standard_normal(latent, dtype=np.float32),
        rng.standard_normal(latent, dtype=np.float32),
        rng.standard_normal((batch, 77, 1024), dtype=np.float32),
    )


def make_runtime(spec: dict):
    """The runtime a worker times; built inside the worker so its memory counts."""
    if spec["backend"] == "onnx-cpu":
        from promptus_codec.decoder.onnx_runtime import OnnxRuntime

        return OnnxRuntime({spec["batch"]: spec["graph"]}, device="cpu")
    import torch

    from promptus_codec.decoder.torch_runtime import TorchRuntime

    model = build_model(spec["model"])
    runtime = TorchRuntime(model, model.spec.generation)
    if spec["backend"] == "torch-compile":
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: folded, prepacked for oneDNN
        runtime.generator = torch.compile(runtime.generator)
    return runtime


def worker(spec: dict) -> dict:
    """Time one configuration: setup (build + first call), then repeats until ``min_seconds``."""
    started = time.perf_counter()
    inputs = random_inputs(spec["batch"], spec["size"])
    runtime = make_runtime(spec)
    for _ in range(spec["warmup"]):
        runtime.generate(*inputs)
    setup = time.perf_counter() - started
    times, cpu = [], cpu_seconds()
    while len(times) < spec["min_repeats"] or (sum(times) < spec["min_seconds"] and len(times) < spec["max_repeats"]):
        t = time.perf_counter()
        runtime.generate(*inputs)
        times.append(time.perf_counter() - t)
    return {
        "seconds_per_call": times,
        "setup_s": setup,
        "peak_rss_mb": peak_rss_mb(),
        "cores_used": (cpu_seconds() - cpu) / sum(times),
        "torch_imported": "torch" in sys.modules,
    }


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: divided by wall time, the cores it got."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export_worker(spec: dict) -> dict:
    """Export (or find) the graphs of one (model, size) at the given batches: {batch: path}."""
    from promptus_codec.engine.cache import find_graphs
    from promptus_codec.engine.export import export_graph, graph_key

    model = build_model(spec["model"])
    graphs, seconds = {}, {}
    for batch in spec["batches"]:
        key = graph_key(model, batch, spec["size"], spec["size"])
        found = find_graphs(key, Path(spec["engine_dir"])).get(batch)
        if found is None:
            exported = export_graph(model, batch, spec["size"], spec["size"], directory=spec["engine_dir"])
            found, seconds[batch] = exported.path, exported.seconds
        graphs[batch] = str(found)
    return {"graphs": graphs, "export_s": seconds}


def flops_per_frame(model_name: str, size: int) -> float:
    """GFLOP of one frame's generation step (batch 1), counted on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from promptus_codec.generate import GenerationStep

    generator = GenerationStep(build_model(model_name, device="meta"))
    z = torch.zeros(1, 4, size // 8, size // 8, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        latents = generator.latents(z, z, torch.zeros(1, 77, 1024, device="meta"))
        generator.model.decode_latent(latents)
    return counter.get_total_flops() / 1e9


def matmul_peaks(n: int = 4096, repeats: int = 6) -> dict[str, float]:
    """Best fp32 GFLOP/s of an n x n matmul per GEMM library on this machine: torch (MKL here) and
    onnxruntime (MLAS). They differ: MKL takes a slower path on AMD CPUs."""
    import numpy as np

    peaks = {}
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    for name, run in matmul_runners(a, b).items():
        run()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        peaks[name] = 2 * n**3 / best / 1e9
    return peaks


def matmul_runners(a, b) -> dict:
    """name -> zero-argument callable computing a @ b with that library."""
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    runners = {"torch": lambda: torch.matmul(ta, tb)}
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return runners
    shape = list(a.shape)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runners["onnxruntime"] = lambda: session.run(None, {"a": a, "b": b})
    return runners


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


def run_subprocess(kind: str, spec: dict, timeout: float) -> dict:
    """Run a worker in a fresh interpreter; {"error": ...} when it fails or times out."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import decode; "
        f"print('RESULT', json.dumps(decode.{kind}(json.loads(sys.argv[1]))))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": tail[:200]}


def plan(args) -> list[dict]:
    """The configurations to time, in order: (model, size, backend, batch)."""
    configs = [("tiny", 128)] * ("tiny" in args.models) + [("sd-arch", size) for size in args.sizes] * (
        "sd-arch" in args.models
    )
    batches = sorted({1, args.batch})
    jobs = []
    for model, size in configs:
        for batch in [1] if args.quick and model == "sd-arch" else batches:
            for backend in args.backends:
                jobs.append({"model": model, "size": size, "backend": backend, "batch": batch})
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model + SD-arch 256x256 at batch 1 only")
    parser.add_argument("--sizes", type=int, nargs="*", default=[256], help="SD-arch sizes (default 256)")
    parser.add_argument("--batch", type=int, default=10, help="K: the larger batch (default 10)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--models", nargs="+", default=["tiny", "sd-arch"], choices=["tiny", "sd-arch"])
    parser.add_argument("--min-seconds", type=float, default=10.0, help="time each configuration at least this long")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    parser.add_argument("--engine-dir", default=None, help="where exported graphs are cached (default: engine/)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/decode.json"), help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [256]

    from promptus_codec.engine.cache import engine_dir

    directory = str(Path(args.engine_dir) if args.engine_dir else engine_dir().resolve())
    load_start = os.getloadavg()[0]
    peaks_start = matmul_peaks()
    peak_start = max(peaks_start.values())
    print(f"fp32 matmul peak: {describe(peaks_start)} (load average {load_start:.2f})", flush=True)

    jobs = plan(args)
    gflop = {(m, s): flops_per_frame(m, s) for m, s in {(j["model"], j["size"]) for j in jobs}}
    graphs, export_s = {}, {}
    for model, size in sorted(gflop):
        wanted = sorted(
            {j["batch"] for j in jobs if (j["model"], j["size"]) == (model, size) and j["backend"] == "onnx-cpu"}
        )
        if wanted:
            got = run_subprocess(
                "export_worker",
                {"model": model, "size": size, "batches": wanted, "engine_dir": directory},
                args.timeout,
            )
            if "error" in got:
                print(f"export {model} {size}: {got['error']}", flush=True)
                continue
            graphs.update({(model, size, int(b)): p for b, p in got["graphs"].items()})
            export_s.update({f"{model} {size} b{b}": s for b, s in got["export_s"].items()})
            for b, s in got["export_s"].items():
                print(f"exported {model} {size}x{size} batch {b} in {s:.1f} s", flush=True)

    results = []
    for job in jobs:
        spec = {
            **job,
            "warmup": 2,
            "min_repeats": 2 if job["model"] != "tiny" else 5,
            "max_repeats": 50,
            "min_seconds": args.min_seconds,
        }
        if job["backend"] == "onnx-cpu":
            spec["graph"] = graphs.get((job["model"], job["size"], job["batch"]))
            if spec["graph"] is None:
                results.append({**job, "error": "no exported graph"})
                continue
        got = run_subprocess("worker", spec, args.timeout)
        row = {**job, **got}
        if "error" not in got:
            per_frame = min(got["seconds_per_call"]) / job["batch"]
            row.update(
                ms_per_frame=per_frame * 1e3,
                fps=1 / per_frame,
                median_ms_per_frame=statistics.median(got["seconds_per_call"]) / job["batch"] * 1e3,
                gflops=gflop[(job["model"], job["size"])] / per_frame,
            )
        results.append(row)
        print(format_row(row, peak_start), flush=True)

    peaks_end = matmul_peaks()
    peak = max(peak_start, *peaks_end.values())
    print(
        f"\nfp32 matmul peak: {describe(peaks_start)} at the start, {describe(peaks_end)} at the end "
        f"(load average {load_start:.2f} -> {os.getloadavg()[0]:.2f}); % of peak uses the best, {peak:.0f}"
    )
    for (model, size), g in sorted(gflop.items()):
        print(f"{model} {size}x{size}: {g:.1f} GFLOP/frame -> floor {g / peak * 1e3:.0f} ms/frame at peak")
    print()
    print(HEADER)
    for row in results:
        print(format_row(row, peak))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "matmul_gflops": {"start": peaks_start, "end": peaks_end},
                    "load_average": [load_start, os.getloadavg()[0]],
                },
                "gflop_per_frame": {f"{m} {s}": g for (m, s), g in gflop.items()},
                "export_s": export_s,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.json}")


def describe(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {gflops:.0f} GFLOP/s" for name, gflops in peaks.items())


HEADER = (
    f"{'model':<8} {'size':>4} {'backend':<14} {'batch':>5} {'ms/frame':>9} {'frames/s':>8} "
    f"{'GFLOP/s':>8} {'% peak':>6} {'peak RSS MB':>11} {'setup s':>7} {'cores':>5}"
)


def format_row(row: dict, peak: float) -> str:
    head = f"{row['model']:<8} {row['size']:>4} {row['backend']:<14} {row['batch']:>5}"
    if "error" in row:
        return f"{head}  failed: {row['error']}"
    return (
        f"{head} {row['ms_per_frame']:>9.1f} {row['fps']:>8.2f} {row['gflops']:>8.1f} "
        f"{row['gflops'] / peak * 100:>5.0f}% {row['peak_rss_mb']:>11.0f} {row['setup_s']:>7.1f} "
        f"{row['cores_used']:>5.2f}"
    )


if __name__ == "__main__":
    main()
