"""The exported model bundle and its ONNX Runtime sessions, without PyTorch.

A bundle folder holds ``model.onnx`` (uint8 image of any size -> calibrated P(roadwork), fixed
multi-view) with ``metadata.json``; the adaptive two-graph path (``global_view.onnx`` +
``tiles.onnx`` + ``adaptive.json``, see ``adaptive.py``) and, on a CUDA machine, an FP16 TensorRT
engine (``model_fp16.engine``) sit beside them. Everything a server or a miner needs to load and run
it lives here and imports ONNX Runtime and NumPy, not PyTorch, so a miner process starts fast and
stays small; building the graphs is ``export.py``'s job.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from pydantic import BaseModel, ConfigDict, ValidationError

from stage1_core.common.atomic_io import atomic_directory
from stage1_core.common.logit_map import LogitMap
from stage1_core.serving.adaptive import AdaptiveOutcome, AdaptivePolicy, run_adaptive
from stage1_core.serving.errors import ModelLoadError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "p_roadwork"
TILES_INPUTS = ("canvas", "global_features")  # the tiles graph's inputs, in order
IMAGE_TYPE = "tensor(uint8)"  # what the image input of model.onnx and global_view.onnx takes
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
ENGINE_FILE = "model_fp16.engine"
GLOBAL_FILE = "global_view.onnx"
TILES_FILE = "tiles.onnx"
ADAPTIVE_FILE = "adaptive.json"
ADAPTIVE_SPEEDUP_TARGET = 3.0  # issue 6: adaptive >= 3x the images/s of fixed multi-view ...
ADAPTIVE_MCC_BUDGET = 0.01  # ... at a cost of at most 1 MCC point on val_test


class ParityReport(BaseModel):
    """Largest difference of probabilities between an exported runtime and PyTorch on real images."""

    runtime: str
    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    passed: bool


class ServingSpeed(BaseModel):
    """Images/s of the exported graphs in ONNX Runtime, one image per call (the miner's case), on one labelled set."""

    n_images: int
    threads: int | None  # ONNX Runtime intra-op threads (None: its default, one per physical core)
    fixed_images_per_s: float
    adaptive_images_per_s: float
    single_view_images_per_s: float
    adaptive_speedup: float  # adaptive / fixed multi-view images per second


class AdaptiveMetadata(BaseModel):
    """What a server needs to run the two graphs, how they were checked, and what they give on val_test."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    opset: int
    canvas_size: int
    calibration: LogitMap
    policy: AdaptivePolicy  # its ``fitted_on`` is the outcome on val_select
    parity: list[ParityReport]
    val_test: AdaptiveOutcome | None = None
    speed: ServingSpeed | None = None

    def summary_lines(self) -> list[str]:
        """The val_test figures against the issue's targets, for logs."""
        outcome, speed, policy = self.val_test, self.speed, self.policy
        if outcome is None or speed is None:
            return [f"adaptive multi-view: {policy.describe()} (not measured on val_test)"]
        speed_ok = speed.adaptive_speedup >= ADAPTIVE_SPEEDUP_TARGET
        mcc_ok = outcome.mcc_drop <= ADAPTIVE_MCC_BUDGET
        return [
            f"adaptive multi-view on val_test ({outcome.n_images} images): {policy.describe()}: "
            f"{outcome.skip_rate:.0%} skipped, {outcome.views_per_image:.2f} views/image",
            f"  MCC fixed {outcome.mcc_full:.4f}, adaptive {outcome.mcc_adaptive:.4f} (drop {outcome.mcc_drop:+.4f}, "
            f"budget {ADAPTIVE_MCC_BUDGET}: {'met' if mcc_ok else 'MISSED'}), single view {outcome.mcc_global:.4f}",
            f"  images/s (ONNX Runtime, one image per call): fixed {speed.fixed_images_per_s:.1f}, "
            f"adaptive {speed.adaptive_images_per_s:.1f}, "
            f"single view {speed.single_view_images_per_s:.1f}; adaptive / fixed {speed.adaptive_speedup:.2f}x "
            f"(target {ADAPTIVE_SPEEDUP_TARGET}x: {'met' if speed_ok else 'MISSED'})",
        ]


class ExportMetadata(BaseModel):
    """What a server needs to know about the exported model, and how it was checked."""

    opset: int
    input_spec: str
    output_spec: str
    canvas_size: int
    views_per_image: int
    calibration: LogitMap
    decision_threshold: float
    parity: list[ParityReport]  # ONNX Runtime first, then TensorRT when an engine was built
    tensorrt: str  # "built: ..." or why no engine was built
    onnxruntime_fusions: dict[
        str, int
    ] = {}  # fused subgraphs by kind in model.onnx (empty: the exporter's graph as is)
    torch_version: str
    onnxruntime_version: str


SKIP_LAYER_NORM_FUSION = "SkipLayerNormFusion"  # ONNX Runtime's graph transformer, by its registered name


def _plain_bound(bound: float) -> float | str:
    """A margin bound as plain JSON for metadata: ``inf`` (that side never skips the tiles) as "never"."""
    return bound if np.isfinite(bound) else "never"


REWRITE_BUNDLE = (
    "restore the bundle from the export step's output, or write it again "
    "(python -m pipelines.predict --model champion --save-bundle DIR)"
)
# What ONNX Runtime raises for bytes that are no loadable model (plain Exception subclasses, not RuntimeError).
ONNXRUNTIME_LOAD_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_metadata(path: Path, model: type[ModelT]) -> ModelT:
    """A bundle's JSON file as its pydantic model.

    Raises:
        ModelLoadError: the file is missing, unreadable, not JSON, or not this model (the first problem named).
    """
    try:
        return model.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot be read ({error.strerror or error}); {REWRITE_BUNDLE}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        raise ModelLoadError(f"{path}: not a valid {model.__name__} ({problem}); {REWRITE_BUNDLE}") from None


def read_graph(path: Path) -> bytes:
    """An ONNX graph file's bytes (checked for what can be checked without parsing: present and not empty).

    Raises:
        ModelLoadError: the file is missing, unreadable or empty.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot be read ({error.strerror or error}); {REWRITE_BUNDLE}") from None
    if not data:
        raise ModelLoadError(f"{path}: empty file (0 bytes); {REWRITE_BUNDLE}")
    return data


def checked_session(
    onnx_bytes: bytes, origin: str, inputs: tuple[str, ...], threads: int | None = None
) -> onnxruntime.InferenceSession:
    """A CPU session of a bundle graph whose input names are ``inputs``.

    Raises:
        ModelLoadError: the bytes are no ONNX model ONNX Runtime can load (truncated, corrupt), or one with
            other inputs (not this project's graph); the message names ``origin``.
    """
    try:
        session = cpu_session(onnx_bytes, threads)
    except ONNXRUNTIME_LOAD_ERRORS as error:
        reason = str(error).split(" : ")[-1].strip().rstrip(".")
        raise ModelLoadError(
            f"{origin}: not a loadable ONNX model ({reason}; truncated or corrupt?); {REWRITE_BUNDLE}"
        ) from None
    found = tuple(node.name for node in session.get_inputs())
    if found != inputs:
        raise ModelLoadError(f"{origin}: a graph with inputs {list(found)}, expected {list(inputs)}; {REWRITE_BUNDLE}")
    image_types = {node.type for node in session.get_inputs() if node.name == INPUT_NAME}
    if image_types - {IMAGE_TYPE}:
        raise ModelLoadError(
            f"{origin}: its {INPUT_NAME!r} input is {image_types.pop()}, expected {IMAGE_TYPE}; {REWRITE_BUNDLE}"
        )
    return session


def cpu_session(onnx_bytes: bytes, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` bounds its intra-op threads (None: ONNX Runtime's default).

    Its threads sleep when idle instead of spinning: adaptive serving alternates two sessions, and
    each one's spinning pool took the cores from the other (measured: the adaptive path ran 1.6x
    slower on 2 cores); a single session loses nothing measurable. ONNX Runtime does not fuse
    Add + LayerNormalization into its slower SkipLayerNormalization kernel (see ``export.fuse_for_onnxruntime``).
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        onnx_bytes,
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=[SKIP_LAYER_NORM_FUSION],
    )


class AdaptiveSessions:
    """The two graphs in ONNX Runtime, run as adaptive serving (or both passes for every image, for fitting)."""

    def __init__(self, global_onnx: bytes, tiles_onnx: bytes, threads: int | None = None, origin: str = "") -> None:
        """Start both sessions; ``origin`` (the bundle folder) names the files in errors.

        Raises:
            ModelLoadError: a graph ONNX Runtime cannot load, or one with other inputs.
        """
        prefix = f"{origin}/" if origin else ""
        self.global_session = checked_session(global_onnx, f"{prefix}{GLOBAL_FILE}", (INPUT_NAME,), threads)
        self.tiles_session = checked_session(tiles_onnx, f"{prefix}{TILES_FILE}", TILES_INPUTS, threads)

    def global_pass(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(global-view features, calibrated global-view P, canvas) of a uint8 ``[B, 3, H, W]`` batch."""
        global_features, p_global, canvas = self.global_session.run(None, {INPUT_NAME: images})
        return global_features, p_global, canvas

    def tiles_pass(self, canvas: np.ndarray, global_features: np.ndarray) -> np.ndarray:
        return self.tiles_session.run(None, dict(zip(TILES_INPUTS, (canvas, global_features), strict=True)))[0]

    def predict(self, images: np.ndarray, policy: AdaptivePolicy) -> tuple[np.ndarray, np.ndarray]:
        """P(roadwork) and views used per image of a uint8 ``[B, 3, H, W]`` batch."""
        return run_adaptive(self.global_pass, self.tiles_pass, images, policy)

    def both(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global-view P, fixed multi-view P) for every image: what the policy is fitted on."""
        global_features, p_global, canvas = self.global_pass(images)
        return p_global, self.tiles_pass(canvas, global_features)


class AdaptiveExport:
    """The two ONNX graphs and their policy; stored as ``global_view.onnx`` + ``tiles.onnx`` + ``adaptive.json``."""

    def __init__(self, global_onnx: bytes, tiles_onnx: bytes, metadata: AdaptiveMetadata) -> None:
        self.global_onnx = global_onnx
        self.tiles_onnx = tiles_onnx
        self.metadata = metadata

    def save(self, directory: Path) -> Path:
        """Write the files into ``directory`` (next to ``model.onnx`` in an exported bundle)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / GLOBAL_FILE).write_bytes(self.global_onnx)
        (directory / TILES_FILE).write_bytes(self.tiles_onnx)
        (directory / ADAPTIVE_FILE).write_text(self.metadata.model_dump_json(indent=2))
        return directory

    @staticmethod
    def present(directory: Path) -> bool:
        return all((directory / name).is_file() for name in (GLOBAL_FILE, TILES_FILE, ADAPTIVE_FILE))

    @classmethod
    def load(cls, directory: Path) -> AdaptiveExport:
        """Read the three files.

        Raises:
            ModelLoadError: ``adaptive.json`` is unreadable or invalid, or a graph file cannot be read.
        """
        metadata = read_metadata(directory / ADAPTIVE_FILE, AdaptiveMetadata)
        return cls(read_graph(directory / GLOBAL_FILE), read_graph(directory / TILES_FILE), metadata)

    def sessions(self, threads: int | None = None, origin: str = "") -> AdaptiveSessions:
        return AdaptiveSessions(self.global_onnx, self.tiles_onnx, threads, origin)


class ExportedModel:
    """The exported bundle: the fixed multi-view ONNX model and its metadata, and optional extras.

    The extras are the adaptive graphs and the TensorRT engine, when built.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        metadata: ExportMetadata,
        adaptive: AdaptiveExport | None = None,
        tensorrt_engine: bytes | None = None,
    ) -> None:
        self.onnx_bytes = onnx_bytes
        self.metadata = metadata
        self.adaptive = adaptive
        self.tensorrt_engine = tensorrt_engine
        self.adaptive_error: str | None = None  # why a bundle's adaptive files were present but not loaded

    def save(self, directory: Path) -> Path:
        """Write the bundle folder: what ``load``, the predictor and the materializer read.

        The folder is published whole (``atomic_directory``): a crash mid-save leaves the previous bundle or none,
        never a folder that loads with a missing or half-written graph.
        """
        with atomic_directory(Path(directory)) as staging:
            (staging / MODEL_FILE).write_bytes(self.onnx_bytes)
            (staging / METADATA_FILE).write_text(self.metadata.model_dump_json(indent=2))
            if self.adaptive is not None:
                self.adaptive.save(staging)
            if self.tensorrt_engine is not None:
                (staging / ENGINE_FILE).write_bytes(self.tensorrt_engine)
        return Path(directory)

    @classmethod
    def load(cls, directory: Path) -> ExportedModel:
        """Read a bundle folder; the adaptive graphs and the engine are optional.

        Broken adaptive files leave the bundle without its adaptive path (a warning says which file and why):
        the fixed multi-view model still serves every image.

        Raises:
            ModelLoadError: ``model.onnx`` or ``metadata.json`` is missing, unreadable or invalid (named).
        """
        directory = Path(directory)
        metadata = read_metadata(directory / METADATA_FILE, ExportMetadata)
        onnx_bytes = read_graph(directory / MODEL_FILE)
        adaptive, adaptive_error = None, None
        if AdaptiveExport.present(directory):
            try:
                adaptive = AdaptiveExport.load(directory)
            except ModelLoadError as error:
                adaptive_error = str(error)
                logger.warning("%s; serving without the adaptive graphs (full mode)", error)
        engine = (directory / ENGINE_FILE).read_bytes() if (directory / ENGINE_FILE).is_file() else None
        exported = cls(onnx_bytes, metadata, adaptive, engine)
        exported.adaptive_error = adaptive_error
        return exported

    def summary(self) -> dict[str, float | int | str | bool]:
        """Flat figures for artifact and step metadata.

        They cover parity, TensorRT, and the adaptive policy and its val_test outcome.
        """
        meta = self.metadata
        values: dict[str, float | int | str | bool] = {
            "opset": meta.opset,
            "input_spec": meta.input_spec,
            "tensorrt": meta.tensorrt,
            "tensorrt_engine": self.tensorrt_engine is not None,
            "onnxruntime_fusions": ", ".join(f"{name} {count}" for name, count in meta.onnxruntime_fusions.items())
            or "none",
            "size_mb": round(len(self.onnx_bytes) / 1e6, 2),
            "adaptive": self.adaptive is not None,
        }
        for name, report in zip(("onnx", "tensorrt"), meta.parity, strict=False):
            values |= {f"{name}_max_abs_diff": report.max_abs_diff, f"{name}_parity_images": report.n_images}
        adaptive = self.adaptive.metadata if self.adaptive is not None else None
        if adaptive is not None:
            policy = adaptive.policy
            values |= {
                "adaptive_margin_threshold": _plain_bound(policy.margin_threshold),
                "adaptive_positive_margin_threshold": _plain_bound(policy.positive_bound),
                "adaptive_max_mcc_drop": policy.max_mcc_drop,
            }
        if adaptive is not None and adaptive.val_test is not None:
            outcome = adaptive.val_test
            values |= {
                "val_test_views_per_image_adaptive": outcome.views_per_image,
                "val_test_skip_rate": outcome.skip_rate,
                "val_test_mcc_fixed": outcome.mcc_full,
                "val_test_mcc_adaptive": outcome.mcc_adaptive,
                "val_test_mcc_single_view": outcome.mcc_global,
                "val_test_mcc_drop_adaptive": outcome.mcc_drop,
            }
        if adaptive is not None and adaptive.speed is not None:
            speed = adaptive.speed
            values |= {
                "images_per_s_fixed": speed.fixed_images_per_s,
                "images_per_s_adaptive": speed.adaptive_images_per_s,
                "images_per_s_single_view": speed.single_view_images_per_s,
                "adaptive_speedup": speed.adaptive_speedup,
            }
        return {
            name: str(value) if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in values.items()
        }  # JSON metadata: "nan", "inf"

    def session(self, threads: int | None = None) -> onnxruntime.InferenceSession:
        """A CPU ONNX Runtime session of the fixed multi-view model."""
        return cpu_session(self.onnx_bytes, threads)
