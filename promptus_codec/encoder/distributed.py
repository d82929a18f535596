"""Who fits the chunks: this process (SerialScheduler) or Ray workers (RayScheduler).

    driver: plan ──> read the input once, in order ──> (chunk, frames) ──> scheduler
                                                                            │
        SerialScheduler: Encoder.fit_chunk here, one chunk after another    │
        RayScheduler:    _fit_chunk_task on a worker ──(bytes)──────────────┤
                                                                            v
                     WorkDir.store: OUT.work/chunk-*.prx (renamed into place) ──> merge

Both run the same :meth:`Encoder.fit_chunk` under the plan's torch thread count, so serial,
``--workers 1``, ``--workers N`` and a resumed encode write the same bytes (on the same torch build
and CPU; across machines only if their float arithmetic agrees).

**Frames go through Ray's object store, not a shared path.** The driver reads the input once,
front to back, with the same decoder and geometry code for every chunk, and passes each chunk's
coded uint8 frames as a task argument. So a worker needs no access to the input (a cluster needs no
shared file system), no worker seeks in a compressed file, every frame is decoded by one PyAV build
(two builds could disagree on a pixel), and the object store holds at most ``workers + 1``
chunks of frames at a time. The cost is the copy: a 10 s scene at 512 x 512 is 236 MB, small next to
its fitting time. Results come back the same way, as the chunk file's bytes, and only the driver
writes to OUT.work.

Resources: on CUDA each task takes one GPU (``num_gpus=1``); on CPU each takes the plan's thread
count in CPUs (``--threads``, default 1: the thread count is part of the plan because it changes
float results; see encode.py). ``--workers N`` starts a local Ray with N x threads CPUs and stops
it at the end; ``--ray-address`` (or ``RAY_ADDRESS``) joins a running cluster, whose every node must
have promptus-codec and the same model weights installed (a worker refuses other weights, naming
its node). A task that raises, or whose worker process dies, is retried by Ray up to
``--max-tries`` in all; then the encode fails naming the chunk.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from promptus_codec.encoder.chunks import Chunk, ChunkPlan
from promptus_codec.errors import PrxError

DISTRIBUTED_EXTRA = "pip install 'promptus-codec[distributed]'"


def require_ray(why: str):
    """Import ray, or fail with one line naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise PrxError(f"{why} needs Ray, which is not installed: {DISTRIBUTED_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class ModelRef:
    """How a worker loads the encode's model (the same arguments as the driver's load_model)."""

    name: str
    weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class ChunkRun:
    """One chunk fitted: by which worker, from when to when (time.time() on the worker)."""

    chunk: Chunk
    worker: str  # host:pid
    started: float
    finished: float


@dataclass
class Progress:
    """What the schedulers report: frames fitted, chunks done, and each chunk's run."""

    on_frames: Callable[[int], None] | None = None  # total frames fitted so far in this run
    on_chunk: Callable[[ChunkRun], None] | None = None
    runs: list[ChunkRun] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def frames(self, total: int) -> None:
        if self.on_frames:
            self.on_frames(total)

    def chunk(self, run: ChunkRun) -> None:
        self.runs.append(run)
        if self.on_chunk:
            self.on_chunk(run)

    def utilisation(self) -> list[tuple[str, int, float, float]]:
        """Per worker: (worker, chunks, busy seconds, busy share of the fitting wall time)."""
        wall = max((self.finished or time.time()) - self.started, 1e-9)
        workers: dict[str, list[ChunkRun]] = {}
        for run in self.runs:
            workers.setdefault(run.worker, []).append(run)
        rows = []
        for worker, runs in workers.items():
            busy = sum(r.finished - r.started for r in runs)
            rows.append((worker, len(runs), busy, busy / wall))
        return rows


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong, without Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    exc = cause if isinstance(cause, BaseException) else exc
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class SerialScheduler:
    """Fit every chunk in this process, one after another (no Ray; ``--workers 1``)."""

    def __init__(self, max_tries: int = 3, progress: Progress | None = None):
        self.max_tries = max_tries
        self.progress = progress or Progress()
        self.workers = 1
        self.kind = "in this process"

    def run(self, encoder, plan: ChunkPlan, todo: list[Chunk], jobs: Iterable, store) -> None:
        done_frames = 0
        self.progress.started = time.time()
        for chunk, frames in jobs:
            for attempt in range(1, self.max_tries + 1):
                fitted = 0

                def on_keyframe(n: int) -> None:
                    nonlocal fitted
                    fitted += n
                    self.progress.frames(done_frames + fitted)

                encoder.on_keyframe = on_keyframe
                started = time.time()
                try:
                    data = encoder.fit_chunk(plan, chunk, frames)
                    break
                except Exception as exc:
                    self.progress.frames(done_frames)
                    if attempt == self.max_tries:
                        raise PrxError(f"{chunk.describe()} failed after {attempt} tries: {_reason(exc)}") from exc
                finally:
                    encoder.on_keyframe = None
            store(chunk, data)
            done_frames += chunk.frame_count
            self.progress.frames(done_frames)
            self.progress.chunk(ChunkRun(chunk, "in-process", started, time.time()))
        self.progress.finished = time.time()


# -- Ray --------------------------------------------------------------------------------------------

_ENCODERS: dict = {}  # in a worker process: (ModelRef, options, threads) -> Encoder, loaded once


def _worker_encoder(model: ModelRef, options, threads: int):
    key = (model, options, threads)
    if key not in _ENCODERS:
        from promptus_codec.encoder.encode import Encoder
        from promptus_codec.models.registry import load_model

        loaded = load_model(model.name, device=model.device, dtype=model.dtype, weights=model.weights)
        _ENCODERS[key] = Encoder(loaded, options, threads=threads)
    return _ENCODERS[key]


def _fit_chunk_task(model: ModelRef, options, plan: ChunkPlan, chunk: Chunk, frames: np.ndarray, board) -> dict:
    """A Ray task: fit one chunk on this worker; its file's bytes and when it ran."""
    from promptus_codec.decoder.driver import check_model

    started = time.time()
    encoder = _worker_encoder(model, options, plan.threads)
    try:
        check_model(plan.header, encoder.model.identity())
    except PrxError as exc:
        raise PrxError(f"the worker on {socket.gethostname()} has other weights: {exc}") from None
    planned = {k: v for k, v in plan.settings.items() if k != "scene_starts"}
    import json

    if json.loads(json.dumps(encoder.settings())) != planned:
        raise PrxError(f"the worker on {socket.gethostname()} makes other settings (another promptus-codec version?)")
    fitted = 0

    def on_keyframe(n: int) -> None:
        nonlocal fitted
        fitted += n
        board.set.remote(chunk.index, fitted)

    encoder.on_keyframe = on_keyframe
    try:
        data = encoder.fit_chunk(plan, chunk, frames)
    finally:
        encoder.on_keyframe = None
    return {"data": data, "worker": worker_name(), "started": started, "finished": time.time()}


class _Board:
    """A Ray actor: frames fitted so far, per chunk (a retried chunk starts again from 0)."""

    def __init__(self):
        self.frames: dict[int, int] = {}

    def set(self, index: int, frames: int) -> None:
        self.frames[index] = frames

    def total(self) -> int:
        return sum(self.frames.values())


class RayScheduler:
    """Fit chunks as Ray tasks, at most ``workers`` at once (plus one queued so none waits for frames).

    ``address`` None starts a local Ray with ``workers`` x threads CPUs (and stops it after);
    otherwise joins that cluster. A Ray already initialised in this process is used as it is.
    """

    def __init__(
        self,
        model: ModelRef,
        workers: int = 2,
        address: str | None = None,
        max_tries: int = 3,
        gpu: bool = False,
        progress: Progress | None = None,
    ):
        self.model = model
        self.workers = workers
        self.address = address
        self.max_tries = max_tries
        self.gpu = gpu
        self.progress = progress or Progress()
        self.kind = f"on the Ray cluster at {address}" if address else "on a local Ray"

    def _connect(self, ray, threads: int) -> bool:
        """Start or join Ray; True if this call did (and so must shut it down)."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
        if self.address:
            ray.init(address=self.address, **common)
        else:
            ray.init(address="local", num_cpus=self.workers * threads, **common)
        return True

    def slots(self, ray, threads: int) -> int:
        """How many chunks run at once: --workers, or on a cluster without it what the cluster holds."""
        if self.workers > 1 or not self.address:
            return self.workers
        resources = ray.cluster_resources()
        if self.gpu:
            return max(1, int(resources.get("GPU", 1)))
        return max(1, int(resources.get("CPU", 1) // threads))

    def run(self, encoder, plan: ChunkPlan, todo: list[Chunk], jobs: Iterable, store) -> None:
        ray = require_ray("--workers / --ray-address")
        threads = plan.threads
        started_here = self._connect(ray, threads)
        try:
            self._run(ray, encoder, plan, iter(jobs), store, threads)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, encoder, plan: ChunkPlan, jobs: Iterator, store, threads: int) -> None:
        task = ray.remote(_fit_chunk_task).options(
            num_cpus=threads,
            num_gpus=1 if self.gpu else 0,
            max_retries=self.max_tries - 1,  # a dead worker process (system failure)
            retry_exceptions=True,  # an exception in the task
        )
        board = ray.remote(_Board).options(num_cpus=0).remote()
        options = ray.put(encoder.options)
        cap = self.slots(ray, threads) + 1
        pending: dict = {}
        done_frames = 0
        exhausted = False
        self.progress.started = time.time()
        while True:
            while not exhausted and len(pending) < cap:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                chunk, frames = job
                slim = replace(plan, chunks=[chunk], latents={chunk.index: plan.latents[chunk.index]})
                pending[task.remote(self.model, options, slim, chunk, frames, board)] = chunk
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:
                    raise PrxError(f"{chunk.describe()} failed after {self.max_tries} tries: {_reason(exc)}") from None
                store(chunk, result["data"])
                done_frames += chunk.frame_count
                ray.get(board.set.remote(chunk.index, chunk.frame_count))
                self.progress.chunk(ChunkRun(chunk, result["worker"], result["started"], result["finished"]))
            self.progress.frames(ray.get(board.total.remote()))
        self.progress.finished = time.time()
