"""The exported model bundle and its ONNX Runtime sessions, without PyTorch.

A bundle folder holds ``model.onnx`` (uint8 image of any size -> calibrated P(roadwork), fixed
multi-view) with ``metadata.json``; the adaptive two-graph path (``global_view.onnx`` +
``tiles.onnx`` + ``adaptive.json``, see ``adaptive.py``), their static int8 versions (``*_int8.onnx`` +
``int8.json``: served only where the accuracy guard let them, see ``export/quantization.py``) and, on a
CUDA machine, an FP16 TensorRT engine (``model_fp16.engine``) sit beside them. Everything a server or
a miner needs to load and run it lives here and imports ONNX Runtime and NumPy, not PyTorch, so a miner
process starts fast and stays small; building the graphs is ``export.py``'s job.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from pydantic import BaseModel, ConfigDict, ValidationError, computed_field

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
INT8_FILES = {"fixed": "model_int8.onnx", "global": "global_view_int8.onnx", "tiles": "tiles_int8.onnx"}
INT8_FILE = "int8.json"
ADAPTIVE_SPEEDUP_TARGET = 3.0  # issue 6: adaptive >= 3x the images/s of fixed multi-view ...
ADAPTIVE_MCC_BUDGET = 0.01  # ... at a cost of at most 1 MCC point on val_test

Precision = Literal["fp32", "int8"]
ServingPath = Literal["full", "adaptive"]  # fixed multi-view graph; global view + tiles when unsure


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
    int8_fixed_images_per_s: float | None = None  # the int8 graphs, timed in the same loop (None: no int8 graphs)
    int8_adaptive_images_per_s: float | None = None


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
        lines = [
            f"adaptive multi-view on val_test ({outcome.n_images} images): {policy.describe()}: "
            f"{outcome.skip_rate:.0%} skipped, {outcome.views_per_image:.2f} views/image",
            f"  MCC fixed {outcome.mcc_full:.4f}, adaptive {outcome.mcc_adaptive:.4f} (drop {outcome.mcc_drop:+.4f}, "
            f"budget {ADAPTIVE_MCC_BUDGET}: {'met' if mcc_ok else 'MISSED'}), single view {outcome.mcc_global:.4f}",
            f"  images/s (ONNX Runtime, one image per call): fixed {speed.fixed_images_per_s:.1f}, "
            f"adaptive {speed.adaptive_images_per_s:.1f}, "
            f"single view {speed.single_view_images_per_s:.1f}; adaptive / fixed {speed.adaptive_speedup:.2f}x "
            f"(target {ADAPTIVE_SPEEDUP_TARGET}x: {'met' if speed_ok else 'MISSED'})",
        ]
        if speed.int8_fixed_images_per_s is not None and speed.int8_adaptive_images_per_s is not None:
            lines.append(
                f"  images/s of the int8 graphs: fixed {speed.int8_fixed_images_per_s:.1f}, "
                f"adaptive {speed.int8_adaptive_images_per_s:.1f}"
            )
        return lines


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


class PrecisionCheck(BaseModel):
    """One check of the int8 guard: what the int8 graphs change on one labelled set for one serving path."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    dataset: str
    path: ServingPath
    n_images: int
    mcc_fp32: float  # at the validator's threshold
    mcc_int8: float
    mcc_drop: float  # mcc_fp32 - mcc_int8
    decisions_changed: int
    max_abs_diff: float  # of P(roadwork), int8 against fp32
    mean_abs_diff: float
    max_mcc_drop: float  # the budget this check was held to

    @computed_field
    @property
    def passed(self) -> bool:
        return bool(self.mcc_drop <= self.max_mcc_drop + 1e-12)


class Int8Metadata(BaseModel):
    """How the int8 graphs were made, what the guard measured, and which precision the bundle serves (and why)."""

    quantization: str  # format, operand types, calibration
    quantized_nodes: dict[str, int]  # per graph: nodes made int8
    calibration_images: int
    cpu_flags: list[str]  # the exporting CPU's int8 instructions (the guard ran on it)
    onnxruntime_version: str
    checks: list[PrecisionCheck] = []
    served: Precision = "fp32"
    reason: str = "not checked"

    def summary_lines(self) -> list[str]:
        """The guard's figures and verdict, for logs."""
        lines = [f"int8 ({self.quantization}; CPU: {' '.join(self.cpu_flags) or 'no VNNI/AMX'}): serving {self.served}"]
        lines += [
            f"  {check.dataset} {check.path}: MCC {check.mcc_fp32:.4f} fp32 -> {check.mcc_int8:.4f} int8 "
            f"(drop {check.mcc_drop:+.4f}, budget {check.max_mcc_drop}: {'met' if check.passed else 'MISSED'}), "
            f"{check.decisions_changed}/{check.n_images} decisions changed, max |dP| {check.max_abs_diff:.4f}"
            for check in self.checks
        ]
        return [*lines, f"  {self.reason}"]


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
    onnx_bytes: bytes,
    origin: str,
    inputs: tuple[str, ...],
    threads: int | None = None,
    profile_prefix: str | None = None,
) -> onnxruntime.InferenceSession:
    """A CPU session of a bundle graph whose input names are ``inputs`` (``profile_prefix``: see ``cpu_session``).

    Raises:
        ModelLoadError: the bytes are no ONNX model ONNX Runtime can load (truncated, corrupt), or one with
            other inputs (not this project's graph); the message names ``origin``.
    """
    try:
        session = cpu_session(onnx_bytes, threads, profile_prefix)
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


def cpu_session(
    onnx_bytes: bytes, threads: int | None = None, profile_prefix: str | None = None
) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` bounds its intra-op threads (None: ONNX Runtime's default).

    ``profile_prefix``: write ONNX Runtime's per-operator profile to ``<prefix>_<date>.json`` (``end_profiling``
    returns the path; ``benchmarks.inference`` reads the GEMM share from it).

    Its threads sleep when idle instead of spinning: adaptive serving alternates two sessions, and
    each one's spinning pool took the cores from the other (measured: the adaptive path ran 1.6x
    slower on 2 cores); a single session loses nothing measurable. ONNX Runtime does not fuse
    Add + LayerNormalization into its slower SkipLayerNormalization kernel (see ``export.fuse_for_onnxruntime``).
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(
        onnx_bytes,
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=[SKIP_LAYER_NORM_FUSION],
    )


class AdaptiveSessions:
    """The two graphs in ONNX Runtime, run as adaptive serving (or both passes for every image, for fitting)."""

    def __init__(
        self,
        global_onnx: bytes,
        tiles_onnx: bytes,
        threads: int | None = None,
        origin: str = "",
        profile_prefix: str | None = None,
        files: tuple[str, str] = (GLOBAL_FILE, TILES_FILE),
    ) -> None:
        """Start both sessions; ``origin`` (the bundle folder) and ``files`` name the graphs in errors.

        ``profile_prefix``: each session writes ONNX Runtime's profile (``<prefix>_global``, ``<prefix>_tiles``).

        Raises:
            ModelLoadError: a graph ONNX Runtime cannot load, or one with other inputs.
        """
        prefix = f"{origin}/" if origin else ""
        profiles = (None, None) if profile_prefix is None else (f"{profile_prefix}_global", f"{profile_prefix}_tiles")
        global_file, tiles_file = files
        self.global_session = checked_session(
            global_onnx, f"{prefix}{global_file}", (INPUT_NAME,), threads, profiles[0]
        )
        self.tiles_session = checked_session(tiles_onnx, f"{prefix}{tiles_file}", TILES_INPUTS, threads, profiles[1])

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
    """The two ONNX graphs and their policy; stored as ``global_view.onnx`` + ``tiles.onnx`` + ``adaptive.json``.

    ``files`` are the graphs' file names in the bundle, for errors (the int8 pair's in the int8 view).
    """

    def __init__(
        self,
        global_onnx: bytes,
        tiles_onnx: bytes,
        metadata: AdaptiveMetadata,
        files: tuple[str, str] = (GLOBAL_FILE, TILES_FILE),
    ) -> None:
        self.global_onnx = global_onnx
        self.tiles_onnx = tiles_onnx
        self.metadata = metadata
        self.files = files

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
        return AdaptiveSessions(self.global_onnx, self.tiles_onnx, threads, origin, files=self.files)


class Int8Export:
    """The static int8 versions of the bundle's graphs and their metadata (the guard's checks and decision).

    Stored as ``model_int8.onnx`` (+ ``global_view_int8.onnx`` and ``tiles_int8.onnx`` when the bundle is
    adaptive) and ``int8.json``.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        metadata: Int8Metadata,
        global_onnx: bytes | None = None,
        tiles_onnx: bytes | None = None,
    ) -> None:
        if (global_onnx is None) != (tiles_onnx is None):
            raise ValueError("int8 adaptive graphs come in pairs: give both the global-view and the tiles graph")
        self.onnx_bytes = onnx_bytes
        self.metadata = metadata
        self.global_onnx = global_onnx
        self.tiles_onnx = tiles_onnx

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        graphs = {"fixed": self.onnx_bytes, "global": self.global_onnx, "tiles": self.tiles_onnx}
        for name, graph in graphs.items():
            if graph is not None:
                (directory / INT8_FILES[name]).write_bytes(graph)
        (directory / INT8_FILE).write_text(self.metadata.model_dump_json(indent=2))
        return directory

    @staticmethod
    def present(directory: Path) -> bool:
        return (directory / INT8_FILE).is_file() and (directory / INT8_FILES["fixed"]).is_file()

    @classmethod
    def load(cls, directory: Path) -> Int8Export:
        """Read ``int8.json`` and the int8 graphs (the adaptive pair when both are there).

        Raises:
            ModelLoadError: ``int8.json`` is unreadable or invalid, a graph file cannot be read, or one graph of the
                adaptive pair is missing.
        """
        metadata = read_metadata(directory / INT8_FILE, Int8Metadata)
        pair = [directory / INT8_FILES[name] for name in ("global", "tiles")]
        present = [path.is_file() for path in pair]
        if any(present) and not all(present):
            missing = pair[present.index(False)]
            raise ModelLoadError(f"{missing}: missing beside {pair[present.index(True)].name}; {REWRITE_BUNDLE}")
        adaptive = [read_graph(path) for path in pair] if all(present) else [None, None]
        return cls(read_graph(directory / INT8_FILES["fixed"]), metadata, *adaptive)


class ExportedModel:
    """The exported bundle: the fixed multi-view ONNX model and its metadata, and optional extras.

    The extras are the adaptive graphs, their int8 versions and the TensorRT engine, when built.
    ``precision`` says what ``onnx_bytes`` and the adaptive graphs are: ``int8`` only in the view
    :meth:`served` returns for serving, which is not saved.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        metadata: ExportMetadata,
        adaptive: AdaptiveExport | None = None,
        tensorrt_engine: bytes | None = None,
        int8: Int8Export | None = None,
        precision: Precision = "fp32",
    ) -> None:
        self.onnx_bytes = onnx_bytes
        self.metadata = metadata
        self.adaptive = adaptive
        self.tensorrt_engine = tensorrt_engine
        self.int8 = int8
        self.precision = precision
        self.adaptive_error: str | None = None  # why a bundle's adaptive files were present but not loaded

    @property
    def model_file(self) -> str:
        """The file name of the fixed graph in the bundle folder (for errors)."""
        return MODEL_FILE if self.precision == "fp32" else INT8_FILES["fixed"]

    def served(self, precision: Precision | Literal["auto"] = "auto") -> ExportedModel:
        """The bundle with the graphs to serve: ``auto`` follows the int8 guard's decision (fp32 without int8 graphs).

        ``int8`` serves the int8 graphs even where the guard chose fp32 (logged): for measuring them.

        Raises:
            ModelLoadError: ``int8`` asked of a bundle without int8 graphs.
        """
        int8 = self.int8
        if precision == "fp32" or (precision == "auto" and (int8 is None or int8.metadata.served != "int8")):
            return self
        if int8 is None:
            raise ModelLoadError(
                "int8 asked of a bundle without int8 graphs (exported before they existed or with export.int8.enabled "
                "false): serve it as fp32 or export it again"
            )
        if int8.metadata.served != "int8":
            logger.warning("serving the int8 graphs although the guard chose fp32: %s", int8.metadata.reason)
        adaptive = self.adaptive
        if adaptive is not None and int8.global_onnx is not None and int8.tiles_onnx is not None:
            files = (INT8_FILES["global"], INT8_FILES["tiles"])
            adaptive = AdaptiveExport(int8.global_onnx, int8.tiles_onnx, adaptive.metadata, files)
        else:
            adaptive = None
        view = ExportedModel(int8.onnx_bytes, self.metadata, adaptive, int8=int8, precision="int8")
        view.adaptive_error = self.adaptive_error
        return view

    def save(self, directory: Path) -> Path:
        """Write the bundle folder: what ``load``, the predictor and the materializer read.

        The folder is published whole (``atomic_directory``): a crash mid-save leaves the previous bundle or none,
        never a folder that loads with a missing or half-written graph.

        Raises:
            ValueError: this is the int8 view of :meth:`served`, not the bundle.
        """
        if self.precision != "fp32":
            raise ValueError("this is a served int8 view of a bundle: save the bundle it came from")
        with atomic_directory(Path(directory)) as staging:
            (staging / MODEL_FILE).write_bytes(self.onnx_bytes)
            (staging / METADATA_FILE).write_text(self.metadata.model_dump_json(indent=2))
            if self.adaptive is not None:
                self.adaptive.save(staging)
            if self.int8 is not None:
                self.int8.save(staging)
            if self.tensorrt_engine is not None:
                (staging / ENGINE_FILE).write_bytes(self.tensorrt_engine)
        return Path(directory)

    @classmethod
    def load(cls, directory: Path) -> ExportedModel:
        """Read a bundle folder; the adaptive graphs, the int8 graphs and the engine are optional.

        Broken adaptive files leave the bundle without its adaptive path, broken int8 files without its int8 graphs
        (a warning says which file and why): the fixed multi-view model still serves every image, in fp32.

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
        int8 = None
        if Int8Export.present(directory):
            try:
                int8 = Int8Export.load(directory)
            except ModelLoadError as error:
                logger.warning("%s; serving the fp32 graphs", error)
        engine = (directory / ENGINE_FILE).read_bytes() if (directory / ENGINE_FILE).is_file() else None
        exported = cls(onnx_bytes, metadata, adaptive, engine, int8)
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
            values |= {
                name: value
                for name, value in (
                    ("images_per_s_int8_fixed", speed.int8_fixed_images_per_s),
                    ("images_per_s_int8_adaptive", speed.int8_adaptive_images_per_s),
                )
                if value is not None
            }
        if self.int8 is not None:
            int8 = self.int8.metadata
            values |= {"int8_served": int8.served, "int8_reason": int8.reason}
            for check in int8.checks:
                key = f"int8_{check.dataset}_{check.path}"
                values |= {
                    f"{key}_mcc_drop": check.mcc_drop,
                    f"{key}_decisions_changed": check.decisions_changed,
                    f"{key}_max_abs_diff": check.max_abs_diff,
                }
        return {
            name: str(value) if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in values.items()
        }  # JSON metadata: "nan", "inf"

    def session(self, threads: int | None = None) -> onnxruntime.InferenceSession:
        """A CPU ONNX Runtime session of the fixed multi-view model."""
        return cpu_session(self.onnx_bytes, threads)
