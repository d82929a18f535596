"""Scene-parallel encoding (issue 12): serial, --workers 1, --workers 2, a SIGKILLed and resumed encode,
a multi-node Ray cluster and a killed Ray worker all give the same .prx bytes; no Ray = serial only."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("av")

from click.testing import CliRunner  # noqa: E402

from promptus_codec.cli import main  # noqa: E402
from promptus_codec.container.reader import read_prx  # noqa: E402
from promptus_codec.container.records import SceneRecord  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEGMENT = 16  # frames per scene: above PySceneDetect's 15-frame minimum scene length
COMMON = ["--model", "tiny", "--size", "64x64", "--perceptual", "none", "--preset", "draft"]
COMMON += ["--rank", "2", "--interval", "8", "--refresh", "0"]
LIGHT = [*COMMON, "--iterations", "2", "--first-iterations", "3"]
HEAVY = [*COMMON, "--iterations", "25", "--first-iterations", "40"]  # long enough chunks to kill one mid-way


def write_scenes(path, scenes: int = 4) -> None:
    """``scenes`` different pictures, SEGMENT frames each, each drifting a little: one cut between each two."""
    from promptus_codec.media import open_writer

    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    rng = np.random.default_rng(12)
    with open_writer(str(path), 64, 64, Fraction(30)) as writer:
        for s in range(scenes):
            colour = rng.uniform(20, 235, 3)
            freq = 5 + 4 * s
            for t in range(SEGMENT):
                wave = 60 * np.sin((xx * (s % 2) + yy * (1 - s % 2)) / freq + t / 6)
                frame = np.stack([colour[c] + wave * (1 if c == s % 3 else -0.5) for c in range(3)], -1)
                writer.write(np.clip(frame, 0, 255).astype(np.uint8))


def encode(*args):
    return CliRunner().invoke(main, ["encode", *map(str, args)])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "scenes.y4m"
    write_scenes(path)
    return path


@pytest.fixture(scope="module")
def serial(clip, tmp_path_factory):
    """The serial encode (no Ray) every other run must reproduce."""
    out = tmp_path_factory.mktemp("serial") / "serial.prx"
    result = encode(clip, "-o", out, *LIGHT, "-q")
    assert result.exit_code == 0, result.output
    scenes = [r.first_frame for r in read_prx(out).records if isinstance(r, SceneRecord)]
    assert scenes == [0, 16, 32, 48]  # four scenes, all from cuts
    return out


@pytest.fixture(scope="module")
def heavy_serial(clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("heavy") / "heavy.prx"
    result = encode(clip, "-o", out, *HEAVY, "-q")
    assert result.exit_code == 0, result.output
    return out


def needs_ray():
    return pytest.importorskip("ray")


def test_serial_workers_1_and_workers_2_give_the_same_bytes(clip, serial, tmp_path):
    needs_ray()
    inspected = json.loads(CliRunner().invoke(main, ["inspect", str(serial), "--json"]).output)
    assert [s["reason"] for s in inspected["scenes"]] == ["first", "cut", "cut", "cut"]
    one, two = tmp_path / "one.prx", tmp_path / "two.prx"
    result = encode(clip, "-o", one, *LIGHT, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "4 fitted in this process" in result.output
    result = encode(clip, "-o", two, *LIGHT, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "4 fitted on a local Ray" in result.output and "% busy" in result.output
    assert one.read_bytes() == serial.read_bytes()
    assert two.read_bytes() == serial.read_bytes()
    assert not pathlib.Path(f"{two}.work").exists()


def _free_ray_processes(group: int) -> None:
    """What a SIGKILLed driver left in its process group (its local Ray), ended by that group's id."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkilled_workers_2_encode_resumes_to_the_same_bytes(clip, heavy_serial, tmp_path):
    needs_ray()
    out = tmp_path / "o.prx"
    work = pathlib.Path(f"{out}.work")
    args = [sys.executable, str(ROOT / "cli.py"), "encode", str(clip), "-o", str(out), *HEAVY, "--workers", "2"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(work.glob("chunk-*.prx")) and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"encode ended before it could be killed: {process.communicate()}")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        _free_ray_processes(process.pid)
    done = len(list(work.glob("chunk-*.prx")))
    if out.exists():
        pytest.skip("the encode finished before SIGKILL arrived")
    assert 1 <= done < 4 and (work / "plan.json").is_file()
    result = encode(clip, "-o", out, *HEAVY, "--resume", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert f"{done} already done" in result.output
    assert out.read_bytes() == heavy_serial.read_bytes()


@pytest.mark.slow
def test_a_multi_node_cluster_gives_the_same_bytes(clip, serial, tmp_path):
    ray = needs_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster.prx"
        result = encode(clip, "-o", out, *LIGHT, "--ray-address", cluster.address)
        assert result.exit_code == 0, result.output
        assert "on the Ray cluster at" in result.output
        assert out.read_bytes() == serial.read_bytes()
        assert not ray.is_initialized()  # the encode disconnected again
    finally:
        cluster.shutdown()


def _kill_one_fitting_worker(found: list, stop: threading.Event) -> None:
    """SIGKILL the first Ray worker process seen fitting a chunk (its title is ray::_fit_chunk_task)."""
    while not stop.is_set() and not found:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                continue
            if title.startswith(b"ray::_fit_chunk_task"):
                time.sleep(0.3)  # well inside the chunk
                os.kill(int(pid), signal.SIGKILL)
                found.append(int(pid))
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried(clip, heavy_serial, tmp_path):
    needs_ray()
    found, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_one_fitting_worker, args=(found, stop), daemon=True)
    killer.start()
    out = tmp_path / "o.prx"
    try:
        result = encode(clip, "-o", out, *HEAVY, "--workers", "2")
    finally:
        stop.set()
        killer.join(5)
    assert found, "no Ray worker was seen fitting"
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == heavy_serial.read_bytes()


def test_a_chunk_that_keeps_failing_names_itself(clip, tmp_path, monkeypatch):
    from promptus_codec.encoder.encode import Encoder

    calls = []

    def fail(self, plan, chunk, frames):
        calls.append(chunk.index)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Encoder, "fit_chunk", fail)
    out = tmp_path / "o.prx"
    result = encode(clip, "-o", out, *LIGHT, "--max-tries", "2")
    assert result.exit_code == 1
    assert "chunk 0 (frames 0-15) failed after 2 tries: RuntimeError: out of memory" in result.output
    assert calls == [0, 0] and not out.exists() and (pathlib.Path(f"{out}.work") / "plan.json").is_file()


BLOCK_RAY = "import sys; sys.modules['ray'] = None; from promptus_codec.cli import main; main()"


def test_without_ray_serial_works_and_workers_2_names_the_extra(clip, serial, tmp_path):
    out = tmp_path / "o.prx"
    run = [sys.executable, "-c", BLOCK_RAY, "encode", str(clip), "-o", str(out), *LIGHT, "-q"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == serial.read_bytes()
    out.unlink()
    done = subprocess.run([*run, "--workers", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: --workers 2 needs Ray, which is not installed: pip install 'promptus-codec[distributed]'"
    ]
    assert not out.exists() and not pathlib.Path(f"{out}.work").exists()
