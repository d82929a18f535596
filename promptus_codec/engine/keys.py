"""Keys that name exported graphs and built engines, and the metadata a graph carries.

A file is only ever used for the stream whose key it carries in its name:

    GraphKey  <model>-<weights>-<constants>-b<batch>-<W>x<H>-op<opset>-<precision>
              tiny-3bad3a56d3a4-26c90bd3-b10-128x128-op18-fp32.onnx
    TrtKey    <graph key>-trt<version>-sm<cc>-<gpu>-<precision>
              ...-op18-fp32-trt10.3.0-sm89-nvidia_geforce_rtx_4090-fp16.engine

``weights`` hashes the denoiser and decoder digests (the encoder's never runs when decoding) and
``constants`` hashes the generation constants the graph bakes in (the noise is a graph input, so
the seed is not among them). The graph itself carries the full model identity and constants in its
ONNX ``metadata_props`` (:func:`graph_metadata`), checked again once a runtime has loaded it.

No torch or onnxruntime, so the torch-free receiver and the tests use it as is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Mapping

from promptus_codec.container.records import GenerationConstants, ModelIdentity, NoiseGenerator, PredictionType

ONNX_OPSET = 18  # the dynamo exporter's best-tested opset; SD-Turbo exports and matches torch there
PRECISIONS = ("fp32", "fp16")  # weights and activations of an exported graph (its inputs stay float32)
PRECISION_OF_DTYPE = {"float32": "fp32", "float16": "fp16"}  # torch dtype name -> precision
INPUTS = ("z_prev", "noise", "prompts")  # (1, C, h, w), (1, C, h, w), (B, m, n) float32
OUTPUTS = ("latents", "images")  # (B, C, h, w) float32, (B, 3, H, W) float32 in [0, 1]

_GRAPH_STEM = re.compile(
    r"^(?P<model>.+)-(?P<weights>[0-9a-f]{12})-(?P<constants>[0-9a-f]{8})-b(?P<batch>\d+)"
    r"-(?P<width>\d+)x(?P<height>\d+)-op(?P<opset>\d+)-(?P<precision>fp32|fp16)$"
)


def slug(text: str) -> str:
    """``text`` in lower case, each run of characters outside [a-z0-9._-] replaced by '_'."""
    return re.sub(r"[^a-z0-9._-]+", "_", text.lower())


def weights_id(identity: ModelIdentity) -> str | None:
    """12 hex digits naming the denoiser and decoder weights; None for a stream without fingerprints."""
    if identity.unknown:
        return None
    return hashlib.sha256(identity.denoiser_sha256 + identity.decoder_sha256).hexdigest()[:12]


def graph_constants(constants: GenerationConstants) -> dict:
    """The constants an exported graph bakes in (everything but the noise, which is an input)."""
    return {
        "latent_weight": constants.latent_weight,
        "noise_weight": constants.noise_weight,
        "timestep": constants.timestep,
        "alpha_cumprod": constants.alpha_cumprod,
        "prediction_type": int(constants.prediction_type),
    }


def constants_id(constants: GenerationConstants) -> str:
    """8 hex digits naming :func:`graph_constants`."""
    text = json.dumps(graph_constants(constants), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class GraphKey:
    """What an exported ONNX graph was made for; two graphs are interchangeable iff their keys are equal."""

    model: str  # slug of the model name
    weights: str  # weights_id(identity); "?" in a lookup for a stream without fingerprints
    constants: str  # constants_id(constants)
    batch: int  # frames per call: the graph's fixed prompt batch
    width: int  # coded frame size in pixels
    height: int
    opset: int = ONNX_OPSET
    precision: str = "fp32"

    @classmethod
    def create(cls, identity: ModelIdentity, constants: GenerationConstants, batch: int, width: int, height: int,
               opset: int = ONNX_OPSET, precision: str = "fp32") -> "GraphKey":
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
        if batch < 1:
            raise ValueError(f"batch={batch}: expected at least 1")
        weights = weights_id(identity) or "?"
        return cls(slug(identity.name), weights, constants_id(constants), batch, width, height, opset, precision)

    @classmethod
    def parse(cls, stem: str) -> "GraphKey | None":
        """The key a file stem spells, or None when the stem is not a graph key."""
        match = _GRAPH_STEM.match(stem)
        if match is None:
            return None
        parts = match.groupdict()
        ints = {name: int(parts[name]) for name in ("batch", "width", "height", "opset")}
        return cls(parts["model"], parts["weights"], parts["constants"], precision=parts["precision"], **ints)

    @property
    def stem(self) -> str:
        return (f"{self.model}-{self.weights}-{self.constants}-b{self.batch}-{self.width}x{self.height}"
                f"-op{self.opset}-{self.precision}")

    @property
    def filename(self) -> str:
        return self.stem + ".onnx"

    def same_but_batch(self, other: "GraphKey") -> bool:
        """True when ``other`` differs at most in batch (and in weights, where this key's are "?")."""
        mine, theirs = asdict(self), asdict(other)
        ignored = {"batch"} | ({"weights"} if self.weights == "?" else set())
        return all(mine[name] == theirs[name] for name in mine if name not in ignored)


# Device facts a TensorRT engine depends on: what tensorrt_runtime.device_facts() returns.
DEVICE_FACTS = ("gpu_name", "compute_capability", "tensorrt_version")


@dataclass(frozen=True)
class TrtKey:
    """What a TensorRT engine was built for: its ONNX graph, the GPU, TensorRT and the precision."""

    graph: GraphKey
    gpu_name: str  # e.g. "NVIDIA GeForce RTX 4090"
    compute_capability: str  # "major.minor", e.g. "8.9"
    tensorrt_version: str  # engines are not portable across TensorRT versions
    precision: str = "fp16"  # the engine's; the graph's is in ``graph``

    @classmethod
    def create(cls, graph: GraphKey, facts: Mapping[str, str], precision: str = "fp16") -> "TrtKey":
        """The key for ``graph`` on the device ``facts`` describe (keys: :data:`DEVICE_FACTS`)."""
        missing = [name for name in DEVICE_FACTS if not facts.get(name)]
        if missing:
            raise ValueError(f"device facts lack {', '.join(missing)}")
        return cls(graph, str(facts["gpu_name"]), str(facts["compute_capability"]), str(facts["tensorrt_version"]),
                   precision)

    @property
    def stem(self) -> str:
        cc = self.compute_capability.replace(".", "")
        return f"{self.graph.stem}-trt{slug(self.tensorrt_version)}-sm{cc}-{slug(self.gpu_name)}-{self.precision}"

    @property
    def filename(self) -> str:
        return self.stem + ".engine"

    def sidecar(self) -> dict:
        """The JSON object stored beside the engine; a cached engine is loaded only if it matches."""
        facts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "graph"}
        return {"key": self.stem, "graph": asdict(self.graph), **facts}


# ---------------------------------------------------------------------------
# Metadata inside an exported graph (ONNX metadata_props: string -> string)
# ---------------------------------------------------------------------------

META_KEY = "promptus.key"  # GraphKey.stem
META_MODEL = "promptus.model"  # JSON: name and the three sha256 hex digests
META_GENERATION = "promptus.generation"  # JSON: every GenerationConstants field
META_EXPORTER = "promptus.exporter"  # free text: exporter and versions


def graph_metadata(key: GraphKey, identity: ModelIdentity, constants: GenerationConstants, exporter: str) -> dict[str, str]:
    """The metadata_props an exported graph carries."""
    model = {
        "name": identity.name,
        "denoiser_sha256": identity.denoiser_sha256.hex(),
        "decoder_sha256": identity.decoder_sha256.hex(),
        "encoder_sha256": identity.encoder_sha256.hex(),
    }
    generation = {f.name: getattr(constants, f.name) for f in fields(constants)}
    generation = {name: int(v) if isinstance(v, int) else v for name, v in generation.items()}  # IntEnum -> int
    return {
        META_KEY: key.stem,
        META_MODEL: json.dumps(model, sort_keys=True),
        META_GENERATION: json.dumps(generation, sort_keys=True),
        META_EXPORTER: exporter,
    }


def read_graph_metadata(props: Mapping[str, str]) -> tuple[str, ModelIdentity, GenerationConstants]:
    """(key stem, identity, constants) from a graph's metadata_props; ValueError if they are not ours."""
    try:
        model = json.loads(props[META_MODEL])
        generation = json.loads(props[META_GENERATION])
        identity = ModelIdentity(
            model["name"],
            bytes.fromhex(model["denoiser_sha256"]),
            bytes.fromhex(model["decoder_sha256"]),
            bytes.fromhex(model["encoder_sha256"]),
        )
        generation["noise_generator"] = NoiseGenerator(generation["noise_generator"])
        generation["prediction_type"] = PredictionType(generation["prediction_type"])
        return props[META_KEY], identity, GenerationConstants(**generation)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"no promptus metadata in the graph ({type(exc).__name__}: {exc})") from None
