"""benchmarks/gpu_check.py in its CPU mode: every section present, real numbers where it measures.

The script is meant for a GPU this project has never had; on the CPU it must still run every
code path it can (tiny model, 64 x 64), mark the CUDA-only ones skipped with a reason, and
write report.json and report.md.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("matmul_peak", "decode", "encode_step", "encode_clip", "drift", "determinism")
CPU_COMMAND = ["--device", "cpu", "--size", "64", "--model", "tiny"]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The documented CPU command, run once in a subprocess: (report, out folder, stdout)."""
    out = tmp_path_factory.mktemp("gpu-check")
    env = {
        **os.environ,
        "PROMPTUS_CACHE": str(out / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }  # one thread: steady on a shared 2-core machine, and modest
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *CPU_COMMAND, "--out", str(out / "report")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report" / "report.json").read_text()), out / "report", done.stdout


def rows(report, section, **labels):
    found = [r for r in report["sections"][section]["results"] if all(r.get(k) == v for k, v in labels.items())]
    assert found, (section, labels)
    return found


def test_every_section_and_row_is_measured_or_skipped_with_a_reason(cpu_run):
    report = cpu_run[0]
    assert set(report["sections"]) == set(SECTIONS)
    for name, entry in report["sections"].items():
        assert entry["status"] == "measured", (name, entry.get("reason"))  # each has something that runs on CPU
        for row in entry["results"]:
            assert row["status"] in ("measured", "skipped"), (name, row)  # "failed" would be a bug
            if row["status"] == "skipped":
                assert isinstance(row["reason"], str) and len(row["reason"]) > 5, row
    assert report["models"]["tiny"]["status"] == "available" and positive(report["models"]["tiny"]["parameters_m"])
    # The script's contract: it keeps inside --budget (420 s; here it takes ~60 s on an older EPYC)
    assert report["meta"]["device"] == "cpu" and report["meta"]["elapsed_s"] < report["meta"]["budget_s"]


def test_cuda_only_rows_say_so(cpu_run):
    report = cpu_run[0]
    for mode in ("cuda-graph", "compile"):
        for row in rows(report, "decode", mode=mode, dtype="fp32"):
            assert row["status"] == "skipped" and "CUDA" in row["reason"]
    for row in rows(report, "drift"):
        if row["target"].startswith("cuda"):
            assert row["status"] == "skipped" and "CUDA" in row["reason"]
    for section in ("matmul_peak", "decode", "encode_step"):
        for row in rows(report, section, dtype="fp16"):
            assert row["status"] == "skipped" and "fp16" in row["reason"]


def test_matmul_peak_and_decode_figures_are_real(cpu_run):
    report = cpu_run[0]
    for dtype in ("fp32", "bf16"):
        (peak,) = rows(report, "matmul_peak", dtype=dtype)
        assert peak["status"] == "measured" and positive(peak["tflops"]) and peak["tflops"] < 50  # a CPU
        gflop = set()
        for batch in (1, 10):
            (row,) = rows(report, "decode", model="tiny", size=64, batch=batch, dtype=dtype, mode="eager")
            assert row["status"] == "measured", row
            for key in (
                "ms_per_frame",
                "frames_per_s",
                "tflops",
                "pct_of_matmul_peak",
                "peak_mem_mb",
                "gflop_per_frame",
            ):
                assert positive(row[key]), (key, row)
            assert row["ms_per_frame"] * row["frames_per_s"] == pytest.approx(1000, rel=1e-3)
            assert row["tflops"] / peak["tflops"] * 100 == pytest.approx(row["pct_of_matmul_peak"], rel=1e-3)
            assert row["output_finite"] is True and row["calls"] >= 3
            gflop.add(row["gflop_per_frame"])
        assert len(gflop) == 1  # FLOPs per frame do not depend on the batch
        assert 0.05 < gflop.pop() < 1  # tiny at 64 x 64: about 0.2 GFLOP


def test_fitting_stays_finite_and_lowers_the_loss(cpu_run):
    report = cpu_run[0]
    for dtype in ("fp32", "bf16"):
        (row,) = rows(report, "encode_step", model="tiny", dtype=dtype)
        assert row["status"] == "measured", row
        assert row["iterations"] == 10 and row["frames_per_pass"] == 11 and row["stopped_by"] is None
        assert positive(row["ms_per_iteration"]) and positive(row["peak_mem_mb"])
        assert row["losses_finite"] is True and row["grads_finite"] is True and row["zero_grad_steps"] == 0
        assert positive(row["grad_norm_min"]) and row["grad_norm_max"] >= row["grad_norm_min"]
        assert 0 < row["loss_min"] <= row["loss_last"] < row["loss_first"]


def test_clip_encode_decodes_to_its_own_reconstruction(cpu_run):
    (row,) = rows(cpu_run[0], "encode_clip", model="tiny")
    assert row["status"] == "measured", row
    assert (row["frames"], row["keyframes"], row["interval"], row["rank"]) == (30, 4, 10, 8)  # keyframes 0, 10, 20, 29
    assert row["kbps"] == pytest.approx(row["bytes"] * 8 / 1000, rel=1e-6)  # a 1-second clip
    for key in ("bytes", "encode_s", "decode_s", "analyse_s", "mean_psnr_db", "peak_mem_mb"):
        assert positive(row[key]), key
    assert row["decode_equals_recon"] is True


def test_drift_and_determinism(cpu_run):
    report = cpu_run[0]
    (drift,) = rows(report, "drift", model="tiny", target="cpu bf16")
    assert drift["status"] == "measured", drift
    assert len(drift["psnr_db_per_frame"]) == drift["frames"] == 30
    assert all(positive(p) and p <= 100 for p in drift["psnr_db_per_frame"])
    assert drift["psnr_db_last_frame"] == drift["psnr_db_per_frame"][-1]
    assert drift["psnr_db_min"] <= drift["psnr_db_mean"] < 100  # bf16 against fp32: not identical
    assert len(drift["chain_rel_error"]) == 4 and all(positive(e) for e in drift["chain_rel_error"])
    (same,) = rows(report, "determinism", model="tiny", dtype="fp32")
    assert same["status"] == "measured", same
    assert same["identical_frames"] is True and same["identical_latents"] is True and same["frames_differing"] == 0


def test_markdown_summary_is_written(cpu_run):
    report, out, stdout = cpu_run
    text = (out / "report.md").read_text()
    for name in SECTIONS:
        assert f"## {name}: measured" in text
    assert "| tiny | 64 | 10 | fp32 | eager |" in text
    assert "## Skipped or failed" in text and "cuda-graph is measured on CUDA only" in text
    assert "wrote" in stdout and "skipped or failed" in stdout


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_check"]


def test_a_spent_budget_skips_everything_with_the_reason(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTUS_CACHE", str(tmp_path / "cache"))
    report = gpu_check.main([*CPU_COMMAND, "--budget", "0.001", "--out", str(tmp_path)])
    for name in SECTIONS:
        entry = report["sections"][name]
        assert entry["status"] == "skipped" and "budget" in entry["reason"], (name, entry)
    assert json.loads((tmp_path / "report.json").read_text())["sections"].keys() == set(SECTIONS)


def test_device_timestep_changes_nothing_but_where_the_timestep_lives(gpu_check):
    """The CUDA-graph path hands the UNet its timestep as a tensor; the output must not change."""
    from promptus_codec.generate import GenerationStep
    from promptus_codec.models.tiny import load_tiny

    model = load_tiny(device="cpu", dtype="fp32")
    inputs = gpu_check.step_inputs(2, 64, torch.device("cpu"))
    plain = GenerationStep(model)
    staged = GenerationStep(gpu_check.DeviceTimestep(model, plain.constants.timestep), plain.constants)
    with torch.inference_mode():
        for a, b in zip(plain(*inputs), staged(*inputs)):
            assert torch.equal(a, b)
