"""Chunks: an encode cut into scenes that can be fitted anywhere, in any order, and merged.

    pass 1   analyse --Encoder.plan--> ChunkPlan ──> OUT.work/plan.json (atomic; frozen from here on)
    pass 2   for each chunk not yet in OUT.work (any worker, any order):
               frames of the chunk ──fit_chunk──> Scene, (Keyframe, ReconThumbnail, Quality)*
               ──chunk_bytes──> OUT.work/chunk-IIIII-KEY-DIGEST.prx   (temporary name, renamed)
    merge    header, EncoderSettings, every chunk's records in order, Padding ──> OUT.prx (atomic)
             SeekIndex and End from the writer; OUT.work removed

Why a scene is a chunk: a Scene record resets the decoder's state (z_prev is the scene latent,
there is no previous keyframe, decoder/driver.py ClosedLoop), and fitting is seeded per
keyframe (fit.py: seed and frame index). So a chunk's records depend only on its scene latent,
its frames, the ranks rate control gave its keyframes, the seeds and the settings — all in the
plan — and a chunk fitted on another machine, or again after a crash, is the same bytes.
Long scenes are already cut at the forced-refresh points by pass 1 (scene starts with reason
``refresh``), so no chunk is longer than ``--refresh`` seconds.

A chunk file is itself a complete, valid ``.prx``: the chunk as a stream of its own, frame
numbers counted from the chunk's first frame, with its own SeekIndex and End. It is written by
the container's writer and read back by its strict reader (CRCs, decode order, End totals), so
this module packs no bytes; ``promptus inspect`` and ``decode`` work on it. Its name holds the
chunk's *key* (SHA-256 of everything its records depend on, from the plan) and the SHA-256 of its
own bytes: a resume trusts a file only when both check and the records are the plan's keyframes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from promptus_codec.container import schema
from promptus_codec.container.codec import record_to_bytes, recon_thumbnail_payload_size
from promptus_codec.container.reader import PrxReader, read_prx
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    EndRecord,
    FileHeader,
    KeyframeRecord,
    ModelIdentity,
    PaddingRecord,
    QualityRecord,
    ReconThumbnailRecord,
    Record,
    RecordType,
    SceneRecord,
    SeekIndexRecord,
)
from promptus_codec.container.writer import PrxWriter
from promptus_codec.errors import FormatError, PrxError, UsageError
from promptus_codec.fileio import atomic_path
from promptus_codec.ratecontrol import FRAMING, RatePlan, tail_bytes

PLAN_FORMAT = 1  # bump when the plan's meaning changes: an old plan is then refused, never misread
CHUNK_FORMAT = 1  # part of every chunk key: bump when fit_chunk's output changes for the same plan
PLAN_NAME = "plan.json"
WORK_SUFFIX = ".work"


@dataclass(frozen=True)
class Chunk:
    """One scene of the plan (a long one is cut at refresh points by pass 1)."""

    index: int
    first_frame: int
    frame_count: int
    reason: str  # why the scene starts: first, cut, refresh
    keyframes: tuple[tuple[int, int], ...]  # (absolute frame index, rank) in stream order
    budget: int  # bytes of its records in the merged stream, from rate control
    key: str  # SHA-256 (hex) of everything its records depend on

    @property
    def last_frame(self) -> int:
        return self.first_frame + self.frame_count - 1

    def describe(self) -> str:
        return f"chunk {self.index} (frames {self.first_frame}-{self.last_frame})"


@dataclass
class ChunkPlan:
    """The frozen plan of one encode (OUT.work/plan.json); see the module docstring."""

    input_path: str
    input_sha256: str | None  # None: an input that is not a file or folder (cannot be resumed)
    header: FileHeader  # the merged stream's header (model identity included)
    settings: dict  # the EncoderSettings record's JSON (threads and scene_starts included)
    rate: RatePlan | None  # None when read back from JSON; interval, padding and total are kept below
    interval: int
    padding_bytes: int  # -1: no Padding record
    total_bytes: int
    target_kbps: float | None
    chunks: list[Chunk]
    latents: dict[int, np.ndarray]  # chunk index -> (C, h, w) float32 scene latent

    @property
    def threads(self) -> int:
        return int(self.settings["threads"])

    @property
    def frame_count(self) -> int:
        return sum(c.frame_count for c in self.chunks)

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict:
        header = io.BytesIO()
        PrxWriter(header, self.header)  # writes exactly the header
        return {
            "format": PLAN_FORMAT,
            "input": {"path": self.input_path, "sha256": self.input_sha256},
            "model": model_json(self.header.model),
            "seeds": {
                "fit": self.settings["fit"]["seed"],
                "noise": self.header.generation.noise_seed,
                "scene_latent": self.settings["fit"]["scene_latent"],
            },
            "threads": self.threads,
            "settings": self.settings,
            "header": base64.b64encode(header.getvalue()).decode("ascii"),
            "rate": {
                "interval": self.interval,
                "padding_bytes": self.padding_bytes,
                "total_bytes": self.total_bytes,
                "target_kbps": self.target_kbps,
            },
            "chunks": [
                {**asdict(c), "keyframes": [list(k) for k in c.keyframes], "latent": array_json(self.latents[c.index])}
                for c in self.chunks
            ],
        }

    @classmethod
    def from_json(cls, doc: dict, where: str) -> "ChunkPlan":
        if doc.get("format") != PLAN_FORMAT:
            raise UsageError(f"{where} is a plan of format {doc.get('format')!r}; this encoder reads {PLAN_FORMAT}")
        header = PrxReader(io.BytesIO(base64.b64decode(doc["header"]))).header
        chunks, latents = [], {}
        for c in doc["chunks"]:
            latents[c["index"]] = array_from_json(c.pop("latent"))
            chunks.append(Chunk(**{**c, "keyframes": tuple((int(f), int(r)) for f, r in c["keyframes"])}))
        rate = doc["rate"]
        return cls(
            input_path=doc["input"]["path"],
            input_sha256=doc["input"]["sha256"],
            header=header,
            settings=doc["settings"],
            rate=None,
            interval=rate["interval"],
            padding_bytes=rate["padding_bytes"],
            total_bytes=rate["total_bytes"],
            target_kbps=rate["target_kbps"],
            chunks=chunks,
            latents=latents,
        )

    # -- resume checks ------------------------------------------------------------------------

    def check_resume(self, where: str, input_sha256: str | None, model: ModelIdentity, settings: dict) -> None:
        """Refuse to continue this plan with another input, model or settings, naming which."""
        if input_sha256 is None or self.input_sha256 is None:
            raise UsageError(f"cannot resume {where}: the input is not a file or folder whose bytes can be checked")
        if input_sha256 != self.input_sha256:
            raise UsageError(
                f"cannot resume {where}: it was made from another input (SHA-256 {self.input_sha256[:16]}..., "
                f"this input {input_sha256[:16]}...): delete it or run without --resume"
            )
        if model_json(model) != model_json(self.header.model):
            raise UsageError(
                f"cannot resume {where}: it was made for model {self.header.model.short()}, but {model.short()} "
                f"is loaded: delete it or run without --resume"
            )
        planned = {k: v for k, v in self.settings.items() if k != "scene_starts"}
        now = json.loads(json.dumps(settings))  # tuples as lists, as the plan holds them
        if planned != now:
            changed = ", ".join(f"{k}: {a} -> {b}" for k, a, b in differences(planned, now))
            raise UsageError(
                f"cannot resume {where}: it was made with other settings ({changed}): delete it or run without --resume"
            )


def differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, old, new) for every leaf where two settings documents differ; absent keys say so."""
    rows = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if isinstance(x, dict) and isinstance(y, dict):
            rows += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            rows.append(
                (f"{prefix}{key}", "(absent)" if x is _ABSENT else repr(x), "(absent)" if y is _ABSENT else repr(y))
            )
    return rows


_ABSENT = object()


def model_json(model: ModelIdentity) -> dict:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in asdict(model).items()}


def array_json(array: np.ndarray) -> dict:
    """A float32 array, exactly (the scene latents of pass 1)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return {"dtype": "float32", "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def array_from_json(doc: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(doc["data"]), np.float32).reshape(doc["shape"]).copy()


def canonical_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def input_sha256(path: str) -> str | None:
    """SHA-256 of the input file; for a folder of frames, of its files' names and digests; else None."""
    p = Path(path)
    if p.is_file():
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
        return canonical_sha256([[str(q.relative_to(p)), input_sha256(str(q))] for q in files])
    return None


# -- building the plan --------------------------------------------------------------------------


def chunk_budget(header: FileHeader, latent_format, keyframes: list[tuple[int, int]], first_frame: int, verify: bool):
    """Bytes of one chunk's records in the merged stream (the same sizes rate control adds up)."""
    c, h, w = header.latent_shape
    total = schema.record_size(RecordType.SCENE, latent_format=latent_format, latent_elements=c * h * w)
    previous = first_frame - 1
    if verify:
        from promptus_codec.metrics.thumbnail import thumbnail_shape

        thumbnail = FRAMING + recon_thumbnail_payload_size(*thumbnail_shape(header.coded_width, header.coded_height))
    for frame, rank in keyframes:
        total += schema.record_size(
            RecordType.KEYFRAME, rank=rank, prompt_tokens=header.prompt_tokens, prompt_dim=header.prompt_dim
        )
        total += schema.record_size(RecordType.QUALITY, frame_count=frame - previous)
        total += thumbnail if verify else 0
        previous = frame
    return total


def build_plan(
    input_path: str,
    input_digest: str | None,
    header: FileHeader,
    settings: EncoderSettingsRecord,
    rate: RatePlan,
    analysis,
    latent_format,
    verify: bool,
    target_kbps: float | None,
) -> ChunkPlan:
    """One chunk per scene of ``analysis``, each with its keyframes' ranks and its byte budget."""
    settings_doc = json.loads(json.dumps(settings.settings))
    ranks = dict(zip(rate.keyframes, rate.ranks))
    header_bytes = io.BytesIO()
    PrxWriter(header_bytes, header)
    common = {
        "chunk_format": CHUNK_FORMAT,
        "input": input_digest,
        "header": header_bytes.getvalue().hex(),  # model fingerprint, geometry, generation constants
        "settings": settings_doc,
    }
    chunks, latents, first = [], {}, 0
    starts = analysis.scene_starts or ()
    for index, length in enumerate(analysis.scene_lengths):
        keyframes = tuple((f, ranks[f]) for f in range(first, first + length) if f in ranks)
        latent = np.ascontiguousarray(analysis.scene_latents[first], dtype=np.float32)
        entry = {
            "index": index,
            "first_frame": first,
            "frame_count": length,
            "reason": starts[index].reason if index < len(starts) else ("first" if index == 0 else "cut"),
            "keyframes": [list(k) for k in keyframes],
            "budget": chunk_budget(header, latent_format, list(keyframes), first, verify),
        }
        key = canonical_sha256({**common, **entry, "latent": hashlib.sha256(latent.tobytes()).hexdigest()})
        chunks.append(Chunk(**{**entry, "keyframes": keyframes, "key": key}))
        latents[index] = latent
        first += length
    return ChunkPlan(
        input_path=input_path,
        input_sha256=input_digest,
        header=header,
        settings=settings_doc,
        rate=rate,
        interval=rate.interval,
        padding_bytes=rate.padding_bytes,
        total_bytes=rate.total_bytes,
        target_kbps=target_kbps,
        chunks=chunks,
        latents=latents,
    )


# -- chunk files --------------------------------------------------------------------------------


def _shift(record: Record, by: int) -> Record:
    """``record`` with its frame numbers moved by ``by`` (a chunk file counts from its first frame)."""
    if isinstance(record, SceneRecord):
        return replace(record, first_frame=record.first_frame + by)
    if isinstance(record, (KeyframeRecord, ReconThumbnailRecord)):
        return replace(record, frame_index=record.frame_index + by)
    if isinstance(record, QualityRecord):
        return replace(record, first_frame=record.first_frame + by)
    return record


def chunk_bytes(header: FileHeader, chunk: Chunk, records: list[Record]) -> bytes:
    """The chunk as a stream of its own (a complete .prx), after checking its size against the plan."""
    size = sum(len(record_to_bytes(r, header)) for r in records)
    if size != chunk.budget:
        raise PrxError(f"{chunk.describe()}: its records are {size} bytes, the plan gave it {chunk.budget}")
    out = io.BytesIO()
    writer = PrxWriter(out, replace(header, frame_count=chunk.frame_count))
    for record in records:
        writer.write(_shift(record, -chunk.first_frame))
    writer.finish()
    return out.getvalue()


def chunk_records(data: bytes, header: FileHeader, chunk: Chunk) -> list[Record]:
    """The merged stream's records of ``chunk`` from its file's bytes; PrxError if they are not the plan's."""
    try:
        prx = read_prx(io.BytesIO(data), strict=True)
    except FormatError as exc:
        raise PrxError(f"{chunk.describe()}: its file is damaged: {exc}") from None
    if prx.header != replace(header, frame_count=chunk.frame_count):
        raise PrxError(f"{chunk.describe()}: its file has another header than the plan's")
    records = [_shift(r, chunk.first_frame) for r in prx.records if not isinstance(r, (SeekIndexRecord, EndRecord))]
    keyframes = tuple((r.frame_index, r.rank) for r in records if isinstance(r, KeyframeRecord))
    if keyframes != chunk.keyframes:
        raise PrxError(f"{chunk.describe()}: its file holds keyframes {keyframes}, the plan {chunk.keyframes}")
    return records


class WorkDir:
    """OUT.work: the plan and the finished chunks. Every file in it is written to a temporary name and renamed."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = Path(str(output) + WORK_SUFFIX)

    @property
    def plan_path(self) -> Path:
        return self.path / PLAN_NAME

    def _ours(self) -> Iterator[Path]:
        if self.path.is_dir():
            for p in self.path.iterdir():
                chunk_file = p.name.startswith("chunk-") and p.suffix == ".prx"
                if p.name == PLAN_NAME or chunk_file or p.name.startswith("."):
                    yield p

    def remove(self) -> None:
        """Delete the plan, chunk files and temporaries, then the folder if nothing else is in it."""
        for p in list(self._ours()):
            p.unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def start(self, plan: ChunkPlan) -> ChunkPlan:
        """A fresh work folder holding ``plan``; returns the plan as read back (what every run uses)."""
        self.remove()
        self.path.mkdir(exist_ok=True)
        with atomic_path(self.plan_path) as temporary:
            temporary.write_text(json.dumps(plan.to_json(), indent=1, sort_keys=True))
        return self.load()

    def load(self) -> ChunkPlan:
        if not self.plan_path.is_file():
            raise UsageError(f"nothing to resume: {self.plan_path} does not exist (run without --resume)")
        for p in self._ours():
            if p.name.startswith("."):
                p.unlink(missing_ok=True)  # a temporary left by a killed run
        try:
            return ChunkPlan.from_json(json.loads(self.plan_path.read_text()), str(self.plan_path))
        except (ValueError, KeyError, TypeError, FormatError) as exc:
            raise UsageError(
                f"{self.plan_path} is not a plan this encoder can read ({exc}): delete {self.path}"
            ) from None

    @staticmethod
    def chunk_name(chunk: Chunk, data: bytes) -> str:
        return f"chunk-{chunk.index:05d}-{chunk.key[:16]}-{hashlib.sha256(data).hexdigest()[:16]}.prx"

    def store(self, chunk: Chunk, data: bytes) -> Path:
        path = self.path / self.chunk_name(chunk, data)
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        return path

    def find(self, chunk: Chunk, header: FileHeader) -> Path | None:
        """The chunk's file if one is there and checks (digest in its name, records as planned); else None.

        A file that fails is removed, so the chunk is fitted again.
        """
        for path in sorted(self.path.glob(f"chunk-{chunk.index:05d}-{chunk.key[:16]}-*.prx")):
            data = path.read_bytes()
            try:
                if path.name != self.chunk_name(chunk, data):
                    raise PrxError("its bytes do not match the digest in its name")
                chunk_records(data, header, chunk)
                return path
            except PrxError:
                path.unlink(missing_ok=True)
        return None

    def records(self, chunk: Chunk, header: FileHeader) -> list[Record]:
        path = self.find(chunk, header)
        if path is None:
            raise PrxError(f"{chunk.describe()}: its file in {self.path} is missing or damaged")
        return chunk_records(path.read_bytes(), header, chunk)


# -- merge --------------------------------------------------------------------------------------


def merge(plan: ChunkPlan, work: WorkDir, output: Path, on_record: Callable[[Record], None] | None = None) -> EndRecord:
    """Write OUT.prx (temporary name, renamed) from the plan and the chunk files, in decode order."""
    header = plan.header
    with atomic_path(output) as temporary, open(temporary, "wb") as stream:
        writer = PrxWriter(stream, header)
        writer.write(EncoderSettingsRecord(plan.settings))
        for chunk in plan.chunks:
            for record in work.records(chunk, header):
                writer.write(record)
                if on_record is not None:
                    on_record(record)
        if plan.padding_bytes >= 0:  # rate control's last bytes, so the file hits the target exactly
            writer.write(PaddingRecord(plan.total_bytes - writer.offset - FRAMING - tail_bytes(len(plan.chunks))))
        end = writer.finish()
    if os.path.getsize(output) != plan.total_bytes:
        raise PrxError(f"{output} is {os.path.getsize(output)} bytes, rate control planned {plan.total_bytes}")
    return end
