"""Export of the whole serving path to ONNX, checked against PyTorch, with the adaptive graphs and a TensorRT engine.

The exported graph goes from a uint8 RGB image tensor of any size to P(roadwork): resize to the
canvas, normalisation, multi-view crops, backbone, head, top-K aggregation and calibration are all
inside, so a server needs nothing but ONNX Runtime (``serving.py``). Beside it go the two graphs of
adaptive multi-view (global view; tiles), whose margin bounds are fitted on val_select and whose MCC
and speed are measured on val_test, their static int8 versions (``quantization.py``: calibrated on val_calib,
served only if the guard finds them within the MCC budget on val_test), and, where ``tensorrt`` and a CUDA
device are present, an FP16 TensorRT engine of the fixed graph. Every runtime is checked against PyTorch on
real images.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxscript.optimizer
import pandas as pd
import torch
from onnxscript import ir
from onnxscript.rewriter.ort_fusions import bias_gelu, erfgelu, sdpa, sdpa_via_mha, shape_optimization
from pydantic import Field
from torch.nn import functional as F
from tqdm import tqdm

from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import LogitMap
from stage1_core.data.images import load_rgb
from stage1_core.data.splits import bootstrap_groups
from stage1_core.export.quantization import (
    Int8Config,
    guard_decision,
    int8_cpu_flags,
    precision_check,
    quantize_graph,
)
from stage1_core.modeling.model import RoadworkClassifier, make_tiles, resize_to_canvas
from stage1_core.serving.adaptive import AdaptiveConfig, AdaptiveOutcome, evaluate_adaptive, fit_adaptive_policy
from stage1_core.serving.bundle import (
    INPUT_NAME,
    OUTPUT_NAME,
    AdaptiveExport,
    AdaptiveMetadata,
    AdaptiveSessions,
    ExportedModel,
    ExportMetadata,
    Int8Export,
    Int8Metadata,
    ParityReport,
    PrecisionCheck,
    ServingSpeed,
    cpu_session,
)

logger = logging.getLogger(__name__)


class TensorRTConfig(StrictConfig):
    """FP16 TensorRT engine of the fixed graph, built with the tensorrt Python API where tensorrt and CUDA are present.

    FP16 keeps about three significant digits per activation; through a ViT the logit moves by up to
    a few 1e-2, and P = sigmoid(logit) by at most a quarter of that, so P is checked to 1e-2 (only an
    image within 1e-2 of the 0.5 threshold can change its decision).
    """

    enabled: bool = True
    parity_tolerance: float = 1e-2
    min_side: int = Field(
        16, description="smallest image side of the engine's optimisation profile (the graph's own bound)"
    )
    opt_side: int = Field(480, description="image side TensorRT tunes its kernels for")
    max_side: int = Field(
        4096, description="largest image side the engine accepts; resize bigger images before the engine"
    )
    max_batch: int = 32
    workspace_gib: float = 4.0


class ExportConfig(StrictConfig):
    """ONNX export settings, the parity bar against PyTorch, adaptive multi-view and TensorRT."""

    opset: int = 18
    parity_tolerance: float = 1e-4
    parity_images: int = 16
    fuse_for_onnxruntime: bool = Field(
        True,
        description="fuse attention and GELU into ONNX Runtime's contrib ops (onnxscript's ORT fusions) "
        "in the graphs the bundle serves: 1.15-1.22x the images/s of the plain graph on the 2-core CPU "
        "(benchmarks.inference); off: standard ONNX operators only, for runtimes other than ONNX Runtime "
        "(the TensorRT engine is always built from the plain graph)",
    )
    threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads of the val_test speed measurement (None: its default)"
    )
    adaptive: AdaptiveConfig = AdaptiveConfig()
    int8: Int8Config = Int8Config()
    tensorrt: TensorRTConfig = TensorRTConfig()


class TensorRTError(RuntimeError):
    """TensorRT could not parse, build or run the engine; the message says which and why."""


class CalibrationLayer(torch.nn.Module):
    """Any calibrator of ``stage1_core.evaluation.calibration`` in the graph.

    The layer computes sigmoid(a * logsigmoid(z) - b * logsigmoid(-z) + c).
    Temperature scaling is a = b = 1/T, c = 0; Dirichlet (ODIR) calibration reduces to this beta form for two classes.
    """

    def __init__(self, calibration: LogitMap) -> None:
        super().__init__()
        self.a, self.b, self.c = float(calibration.a), float(calibration.b), float(calibration.c)

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * F.logsigmoid(logit) - self.b * F.logsigmoid(-logit) + self.c)


def image_to_canvas(image: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float canvas ``[B, 3, S, S]`` in [0, 1]: the serving graphs' preprocessing.

    The pixel values are resized first and scaled to [0, 1] after (the resize is linear: the same canvas up to
    float rounding), so the division runs on the canvas, not on the photo: 3.4x fewer pixels at 640x480, where
    dividing the photo took 13-20% of the global-view graph's time in ONNX Runtime (``benchmarks.inference``).
    """
    return resize_to_canvas(image.float(), canvas_size, maximum=255.0) / 255.0


class ServingGraph(torch.nn.Module):
    """uint8 ``[B, 3, H, W]`` RGB -> calibrated P(roadwork) ``[B]``."""

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.canvas_size = classifier.config.multiview.canvas_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.classifier(image_to_canvas(image, self.canvas_size)))


class GlobalViewGraph(torch.nn.Module):
    """uint8 ``[B, 3, H, W]`` -> (global-view features, global-view calibrated P(roadwork), canvas).

    Output shapes: global-view features ``[B, D]``, calibrated P(roadwork) from the global view ``[B]``,
    canvas ``[B, 3, S, S]``.
    """

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.canvas_size = classifier.config.multiview.canvas_size
        self.global_only = classifier.config.multiview.model_copy(update={"aggregation": "global_only"})

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        canvas = image_to_canvas(image, self.canvas_size)
        global_features = self.classifier.view_features(canvas, self.global_only)[:, 0]
        return global_features, self.calibrate(self.classifier.head(global_features)[:, 0]), canvas


class TilesGraph(torch.nn.Module):
    """(canvas, global-view features) -> calibrated multi-view P(roadwork) (same as ``ServingGraph``).

    Shapes: canvas ``[B, 3, S, S]``, global-view features ``[B, D]`` -> P(roadwork) ``[B]``.

    The global view's features, not its logit, travel between the graphs, so any aggregation
    (top-K mean of logits or attention over features) pools exactly the fixed graph's views.
    """

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        if classifier.config.multiview.aggregation == "global_only":
            raise ValueError("adaptive multi-view needs a multi-view classifier; this one is configured global_only")
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.multiview = classifier.config.multiview

    def forward(self, canvas: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        tiles = make_tiles(canvas, self.multiview)
        batch, n_tiles = tiles.shape[:2]
        tile_features = self.classifier.embed(tiles.flatten(0, 1)).view(batch, n_tiles, -1)
        features = torch.cat([global_features.unsqueeze(1), tile_features], dim=1)
        return self.calibrate(self.classifier.pool(features, self.multiview))


def image_dims() -> dict[int, torch.export.Dim]:
    """Dynamic batch, height and width of a uint8 image input (the sizes a server may receive)."""
    return {
        0: torch.export.Dim("batch", min=1, max=4096),
        2: torch.export.Dim("height", min=16, max=16384),
        3: torch.export.Dim("width", min=16, max=16384),
    }


def module_to_onnx(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, torch.export.Dim]],
    opset: int,
) -> bytes:
    """Export ``module`` with the dynamo exporter into one self-contained, checked ONNX model (bytes).

    Give examples with a batch of 2 or more: the exporter specialises a dimension of size 1 to a constant.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            examples,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def _example_batch(image: torch.Tensor) -> torch.Tensor:
    """A batch of two copies of a uint8 ``[3, H, W]`` image: the export example (see ``module_to_onnx``)."""
    return torch.stack([image, image])


def fuse_for_onnxruntime(onnx_bytes: bytes) -> tuple[bytes, dict[str, int]]:
    """Rewrite attention and GELU subgraphs into ONNX Runtime's fused contrib operators; leave skip-LayerNorm unfused.

    onnxscript's ORT fusions match the dynamo exporter's patterns (onnxruntime.transformers' optimizer
    matches the TorchScript exporter's and finds no attention here). Its skip-LayerNorm fusion is left out,
    and ``serving.cpu_session`` keeps ONNX Runtime from making it: the CPU SkipLayerNormalization kernel ran
    2.7x slower than Add + LayerNormalization on the demo model's activations, and with it the fused graph
    was no faster than the plain one. Returns the graph and the fusions by kind.
    """
    model = ir.from_proto(onnx.load_from_string(onnx_bytes))
    ir.passes.common.ShapeInferencePass()(model)
    onnxscript.optimizer.optimize(model)
    shape_optimization.rules.apply_to_model(model)
    onnxscript.optimizer.optimize(model)
    counts = {
        "erf_gelu": erfgelu.fuse_erfgelu(model),
        "sdpa": sdpa.fuse_sdpa(model, apply_shape_inference=True),
        "bias_gelu": bias_gelu.fuse_bias_gelu(model),
        "sdpa_via_mha": sdpa_via_mha.replace_sdpa_by_mha(model),
    }
    onnxscript.optimizer.optimize(model)
    return ir.to_proto(model).SerializeToString(), {name: count for name, count in counts.items() if count}


def _maybe_fused(onnx_bytes: bytes, config: ExportConfig) -> tuple[bytes, dict[str, int]]:
    return fuse_for_onnxruntime(onnx_bytes) if config.fuse_for_onnxruntime else (onnx_bytes, {})


def _parity(runtime: str, diffs: list[np.ndarray], n_images: int, tolerance: float) -> ParityReport:
    flat = np.concatenate([np.ravel(d) for d in diffs])
    max_diff = float(flat.max())
    return ParityReport(
        runtime=runtime,
        n_images=n_images,
        max_abs_diff=max_diff,
        mean_abs_diff=float(flat.mean()),
        tolerance=tolerance,
        passed=max_diff <= tolerance,
    )


def check_parity(
    graph: ServingGraph,
    run: Callable[[np.ndarray], np.ndarray],
    images: list[torch.Tensor],
    tolerance: float,
    runtime: str,
) -> ParityReport:
    """Compare a runtime (uint8 batch -> P) with PyTorch one image at a time and as one resized batch.

    One image at a time means each image at its own size.
    """
    diffs = []
    with torch.inference_mode():
        for image in images:
            batch = image.unsqueeze(0)
            diffs.append(np.abs(graph(batch).numpy() - run(batch.numpy())))
        height, width = images[0].shape[1:]
        batch = torch.stack(
            [
                F.interpolate(image.unsqueeze(0).float(), size=(height, width)).squeeze(0).round().to(torch.uint8)
                for image in images
            ]
        )
        diffs.append(np.abs(graph(batch).numpy() - run(batch.numpy())))
    return _parity(runtime, diffs, len(images), tolerance)


def tensorrt_unavailable() -> str | None:
    """Why no TensorRT engine can be built on this machine; None when tensorrt and a CUDA device are present."""
    if importlib.util.find_spec("tensorrt") is None:
        return "skipped: the tensorrt package is not installed (pip install '.[tensorrt]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "skipped: no CUDA device"
    return None


def build_tensorrt_engine(onnx_bytes: bytes, config: TensorRTConfig) -> bytes:
    """A serialized FP16 TensorRT engine of a uint8-image graph, for batch 1..max_batch and sides min_side..max_side.

    The tensorrt Python API rather than ONNX Runtime's TensorRT execution provider: it gives an engine
    file the bundle can carry, and needs no onnxruntime-gpu in place of the CPU onnxruntime wheel.

    Raises:
        TensorRTError: the parser rejects the graph (its errors are quoted) or the build fails.
    """
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT {trt.__version__}'s ONNX parser rejected the graph: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_flag(trt.BuilderFlag.FP16)
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME,
        (1, 3, config.min_side, config.min_side),
        (1, 3, config.opt_side, config.opt_side),
        (config.max_batch, 3, config.max_side, config.max_side),
    )
    builder_config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise TensorRTError(f"TensorRT {trt.__version__} could not build the FP16 engine (its log above says why)")
    return bytes(plan)


class TensorRTRunner:
    """Runs a serialized engine on the current CUDA device: uint8 NumPy batch -> P(roadwork).

    Shapes: ``[B, 3, H, W]`` -> ``[B]``.
    """

    def __init__(self, engine: bytes) -> None:
        import tensorrt as trt

        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise TensorRTError(
                "TensorRT could not deserialize the engine (built by another TensorRT version or for another GPU?)"
            )
        self.context = self.engine.create_execution_context()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(image.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT_NAME, image.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, output.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError(f"TensorRT failed to run a batch of shape {tuple(image.shape)}")
        stream.synchronize()
        return output.cpu().numpy()


def _tensorrt(
    graph: ServingGraph, onnx_bytes: bytes, images: list[torch.Tensor], config: TensorRTConfig
) -> tuple[bytes | None, str, ParityReport | None]:
    """(engine or None, status, parity): never raises.

    So a machine without TensorRT, or a graph it cannot take, still exports.
    """
    if not config.enabled:
        return None, "skipped: disabled in the export config (tensorrt.enabled)", None
    reason = tensorrt_unavailable()
    if reason:
        return None, reason, None
    import tensorrt as trt

    try:
        engine = build_tensorrt_engine(onnx_bytes, config)
        parity = check_parity(
            graph,
            TensorRTRunner(engine),
            images,
            config.parity_tolerance,
            f"tensorrt {trt.__version__} FP16 on {torch.cuda.get_device_name()}",
        )
    except Exception as error:  # noqa: BLE001 - the engine is an optional extra: any failure is logged and recorded, the ONNX export stands
        logger.warning("no TensorRT engine: %s", error, exc_info=not isinstance(error, TensorRTError))
        return None, f"failed: {type(error).__name__}: {error}", None
    if not parity.passed:
        logger.warning(
            "TensorRT FP16 engine differs from PyTorch by %.2e > %.0e: not stored",
            parity.max_abs_diff,
            parity.tolerance,
        )
        return (
            None,
            f"failed: FP16 engine differs from PyTorch by {parity.max_abs_diff:.2e} > {parity.tolerance:.0e}; "
            "engine not stored",
            parity,
        )
    status = (
        f"built: FP16 engine, TensorRT {trt.__version__}, {torch.cuda.get_device_name()}, "
        f"batch 1-{config.max_batch}, sides {config.min_side}-{config.max_side} px"
    )
    return engine, status, parity


def export_onnx(
    classifier: RoadworkClassifier,
    calibration: LogitMap,
    decision_threshold: float,
    images: list[torch.Tensor],
    config: ExportConfig,
) -> ExportedModel:
    """Export the fixed multi-view serving graph and check ONNX Runtime against PyTorch on ``images``.

    ``images`` are uint8 ``[3, H, W]``.

    With ``tensorrt`` and a CUDA device, also build and check an FP16 engine (or record why not).

    Raises:
        RuntimeError: when the ONNX Runtime parity check fails, with the measured difference.
    """
    if not images:
        raise ValueError("export needs at least one real image for the parity check")
    images = images[: config.parity_images]
    graph = ServingGraph(classifier, calibration).eval()
    exported_bytes = module_to_onnx(
        graph, (_example_batch(images[0]),), [INPUT_NAME], [OUTPUT_NAME], {INPUT_NAME: image_dims()}, config.opset
    )
    onnx_bytes, fusions = _maybe_fused(exported_bytes, config)
    session = cpu_session(onnx_bytes)
    parity = check_parity(
        graph,
        lambda batch: session.run(None, {INPUT_NAME: batch})[0],
        images,
        config.parity_tolerance,
        f"onnxruntime {onnxruntime.__version__} CPU",
    )
    if not parity.passed:
        raise RuntimeError(
            f"ONNX Runtime differs from PyTorch by {parity.max_abs_diff:.2e} > {parity.tolerance:.0e} "
            f"on {parity.n_images} images"
        )
    engine, tensorrt_status, tensorrt_parity = _tensorrt(graph, exported_bytes, images, config.tensorrt)
    metadata = ExportMetadata(
        opset=config.opset,
        input_spec=(
            f"{INPUT_NAME}: uint8 [batch, 3, height, width] RGB, any size (resized to {graph.canvas_size} px inside)"
        ),
        output_spec=f"{OUTPUT_NAME}: float32 [batch], calibrated P(roadwork) in [0, 1]",
        canvas_size=graph.canvas_size,
        views_per_image=classifier.config.multiview.views_per_image,
        calibration=calibration,
        decision_threshold=float(decision_threshold),
        parity=[parity] + ([tensorrt_parity] if tensorrt_parity else []),
        tensorrt=tensorrt_status,
        onnxruntime_fusions=fusions,
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
    )
    logger.info(
        "ONNX export: %.1f MB, parity max |diff| %.2e on %d images; TensorRT %s",
        len(onnx_bytes) / 1e6,
        parity.max_abs_diff,
        parity.n_images,
        tensorrt_status,
    )
    return ExportedModel(onnx_bytes, metadata, tensorrt_engine=engine)


def score_both(
    sessions: AdaptiveSessions, images: Iterable[np.ndarray], desc: str = "adaptive fit"
) -> tuple[np.ndarray, np.ndarray]:
    """(global-view P, fixed multi-view P) per uint8 ``[3, H, W]`` image, one image per call (sizes differ)."""
    pairs = [sessions.both(image[None]) for image in tqdm(images, desc=desc, unit="img")]
    return np.concatenate([p for p, _ in pairs]), np.concatenate([p for _, p in pairs])


def _adaptive_parity(
    classifier: RoadworkClassifier,
    calibration: LogitMap,
    sessions: AdaptiveSessions,
    images: list[torch.Tensor],
    tolerance: float,
) -> ParityReport:
    """Both ONNX passes against PyTorch: the global P against the global view, the tiles P against ``ServingGraph``."""
    full_graph = ServingGraph(classifier, calibration).eval()
    global_graph = GlobalViewGraph(classifier, calibration).eval()
    diffs = []
    with torch.inference_mode():
        for image in images:
            batch = image.unsqueeze(0)
            p_global, p_full = sessions.both(batch.numpy())
            diffs += [np.abs(p_global - global_graph(batch)[1].numpy()), np.abs(p_full - full_graph(batch).numpy())]
    return _parity(
        f"onnxruntime {onnxruntime.__version__} CPU, adaptive global + tiles graphs", diffs, len(images), tolerance
    )


def export_adaptive(
    classifier: RoadworkClassifier,
    calibration: LogitMap,
    parity_images: list[torch.Tensor],
    select_images: Iterable[np.ndarray],
    select_labels: np.ndarray,
    config: ExportConfig,
    select_groups: np.ndarray | None = None,
) -> AdaptiveExport:
    """Export the global and tiles graphs, check them against PyTorch, fit the margin bounds on val_select.

    The bound is fitted at ``config.adaptive.decision_threshold`` (the validator's 0.5), not at the
    calibration policy's own threshold: the miner's P is judged at 0.5.

    Args:
        parity_images: uint8 ``[3, H, W]`` images for the parity check (any split: nothing is fitted on them).
        select_images: uint8 ``[3, H, W]`` val_select images, read one at a time.
        select_labels: their 0/1 labels.
        select_groups: their split groups, resampled whole by the fit (None: images one by one).

    Raises:
        RuntimeError: the ONNX graphs differ from PyTorch beyond ``config.parity_tolerance``.
        ValueError: no images, or labels of one class only.
    """
    if not parity_images:
        raise ValueError("adaptive export needs at least one real image for the parity check")
    global_graph = GlobalViewGraph(classifier, calibration).eval()
    tiles_graph = TilesGraph(classifier, calibration).eval()
    example = _example_batch(parity_images[0])
    with torch.inference_mode():
        global_features, _, canvas = global_graph(example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    global_onnx, _ = _maybe_fused(
        module_to_onnx(
            global_graph,
            (example,),
            [INPUT_NAME],
            ["global_features", "p_global", "canvas"],
            {INPUT_NAME: image_dims()},
            config.opset,
        ),
        config,
    )
    tiles_onnx, _ = _maybe_fused(
        module_to_onnx(
            tiles_graph,
            (canvas, global_features),
            ["canvas", "global_features"],
            [OUTPUT_NAME],
            {"canvas": {0: batch}, "global_features": {0: batch}},
            config.opset,
        ),
        config,
    )
    sessions = AdaptiveSessions(global_onnx, tiles_onnx)
    parity = _adaptive_parity(
        classifier, calibration, sessions, parity_images[: config.parity_images], config.parity_tolerance
    )
    if not parity.passed:
        raise RuntimeError(
            f"adaptive ONNX graphs differ from PyTorch by {parity.max_abs_diff:.2e} > {parity.tolerance:.0e} "
            f"on {parity.n_images} images"
        )
    p_global, p_full = score_both(sessions, select_images)
    policy = fit_adaptive_policy(
        p_global, p_full, select_labels, classifier.config.multiview.views_per_image, config.adaptive, select_groups
    )
    metadata = AdaptiveMetadata(
        opset=config.opset,
        canvas_size=global_graph.canvas_size,
        calibration=calibration,
        policy=policy,
        parity=[parity],
    )
    return AdaptiveExport(global_onnx, tiles_onnx, metadata)


def export_int8(exported: ExportedModel, calibration_images: list[np.ndarray], config: Int8Config) -> Int8Export:
    """Static int8 versions of the bundle's fixed graph and adaptive pair, calibrated on uint8 ``[3, H, W]`` images.

    The tiles graph is calibrated on the canvases and global-view features the fp32 global graph gives for the
    same images. The guard has not run yet: the bundle serves fp32 until ``measure_serving`` checked them.

    Raises:
        ValueError: no calibration image.
    """
    if not calibration_images:
        raise ValueError("int8 export needs calibration images (val_calib): none given")
    image_feeds = [{INPUT_NAME: image[None]} for image in calibration_images]
    fixed, n_fixed = quantize_graph(exported.onnx_bytes, image_feeds, config)
    quantized = {"fixed": n_fixed}
    global_int8 = tiles_int8 = None
    if exported.adaptive is not None:
        global_int8, quantized["global"] = quantize_graph(exported.adaptive.global_onnx, image_feeds, config)
        sessions = exported.adaptive.sessions()
        global_passes = (sessions.global_pass(feed[INPUT_NAME]) for feed in image_feeds)
        tiles_feeds = ({"canvas": canvas, "global_features": features} for features, _, canvas in global_passes)
        tiles_int8, quantized["tiles"] = quantize_graph(exported.adaptive.tiles_onnx, tiles_feeds, config)
    metadata = Int8Metadata(
        quantization=(
            f"static QDQ: {'/'.join(config.op_types)} of the backbone, uint8 activations "
            "(MinMax ranges), int8 per-channel weights, fp32 outputs"
        ),
        quantized_nodes=quantized,
        calibration_images=len(calibration_images),
        cpu_flags=int8_cpu_flags(),
        onnxruntime_version=onnxruntime.__version__,
    )
    return Int8Export(fixed, metadata, global_int8, tiles_int8)


def score_serving_paths(
    exported: ExportedModel, images: Iterable[np.ndarray], threads: int | None = None, desc: str = "serving paths"
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """P(roadwork) per image of every serving path of the bundle, and the seconds each path took.

    The paths: ``fixed``, ``single`` (the global view), ``adaptive``, and ``int8 fixed`` / ``int8 adaptive`` when the
    bundle has int8 graphs. One image per call (the miner's case), the paths in turn on each image, so load from
    other processes hits them alike; the first image's first calls (session start-up costs) are not timed.
    """
    if exported.adaptive is None:
        raise ValueError("the exported model has no adaptive graphs: export them with export_adaptive first")
    policy = exported.adaptive.metadata.policy
    fixed, sessions = exported.session(threads), exported.adaptive.sessions(threads)
    paths: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "fixed": lambda batch: fixed.run(None, {INPUT_NAME: batch})[0],
        "single": lambda batch: sessions.global_pass(batch)[1],
        "adaptive": lambda batch: sessions.predict(batch, policy)[0],
    }
    int8 = exported.int8
    if int8 is not None:
        int8_fixed = cpu_session(int8.onnx_bytes, threads)
        paths["int8 fixed"] = lambda batch: int8_fixed.run(None, {INPUT_NAME: batch})[0]
        if int8.global_onnx is not None and int8.tiles_onnx is not None:
            int8_sessions = AdaptiveSessions(int8.global_onnx, int8.tiles_onnx, threads)
            paths["int8 adaptive"] = lambda batch: int8_sessions.predict(batch, policy)[0]
    seconds = dict.fromkeys(paths, 0.0)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    for index, image in enumerate(tqdm(images, desc=desc, unit="img")):
        batch = image[None]
        for name, run in paths.items():
            if index == 0:
                run(batch)
            start = time.perf_counter()
            scores[name].append(run(batch))
            seconds[name] += time.perf_counter() - start
    return {name: np.concatenate(values) for name, values in scores.items()}, seconds


def measure_serving(
    exported: ExportedModel, images: Iterable[np.ndarray], labels: np.ndarray, threads: int | None = None
) -> tuple[AdaptiveOutcome, ServingSpeed, dict[str, np.ndarray]]:
    """The bundle's serving paths on a labelled set (val_test): the MCC of each fp32 path, their images/s, the scores.

    The outcome is at the policy's decision threshold, with the views per image; the speed covers the int8 paths
    too when the bundle has them; the scores are :func:`score_serving_paths`'s, for the int8 guard.
    """
    p, seconds = score_serving_paths(exported, images, threads, desc="serving paths on val_test")
    outcome = evaluate_adaptive(p["single"], p["fixed"], labels, exported.adaptive.metadata.policy)
    per_s = {name: outcome.n_images / elapsed for name, elapsed in seconds.items()}
    speed = ServingSpeed(
        n_images=outcome.n_images,
        threads=threads,
        fixed_images_per_s=per_s["fixed"],
        adaptive_images_per_s=per_s["adaptive"],
        single_view_images_per_s=per_s["single"],
        adaptive_speedup=per_s["adaptive"] / per_s["fixed"],
        int8_fixed_images_per_s=per_s.get("int8 fixed"),
        int8_adaptive_images_per_s=per_s.get("int8 adaptive"),
    )
    return outcome, speed, p


def int8_guard_checks(
    dataset: str, scores: dict[str, np.ndarray], labels: np.ndarray, max_mcc_drop: float
) -> list[PrecisionCheck]:
    """The guard's checks of the fixed and the adaptive path on one labelled set (``score_serving_paths``'s scores)."""
    return [
        precision_check(dataset, path, scores[fp32], scores[f"int8 {fp32}"], labels, max_mcc_drop)
        for path, fp32 in (("full", "fixed"), ("adaptive", "adaptive"))
        if f"int8 {fp32}" in scores
    ]


def read_images(uris: Iterable[str]) -> Iterator[np.ndarray]:
    """uint8 RGB ``[3, H, W]`` arrays, one file at a time, read as the training data is (EXIF orientation applied)."""
    for uri in uris:
        yield np.ascontiguousarray(np.asarray(load_rgb(uri)).transpose(2, 0, 1))


def export_bundle(
    classifier: RoadworkClassifier,
    calibration: LogitMap,
    decision_threshold: float,
    val_select: pd.DataFrame,
    val_test: pd.DataFrame,
    config: ExportConfig,
    val_calib: pd.DataFrame | None = None,
) -> ExportedModel:
    """The whole serving bundle: fixed graph (+ TensorRT engine), adaptive graphs and their int8 versions.

    The adaptive graphs are fitted on ``val_select`` and measured on ``val_test``; the int8 graphs are
    calibrated on ``val_calib`` and served only if the guard finds them within budget on ``val_test`` and
    ``val_select`` together: every labelled image that neither training nor the int8 calibration used. Why both:
    int8 changes few decisions (10 of 1,500 fresh demo scenes, at no measurable MCC cost), so on val_test alone
    (107 images in the demo run) one changed decision moved MCC by 2 points and decided the guard by chance.

    Args:
        val_select: manifest rows (``uri``, ``label``) the margin bounds are fitted on (model selection).
        val_test: manifest rows the parity check and the adaptive figures (MCC, speed) use (evaluation).
        val_calib: manifest rows whose images fix the int8 activation ranges (None: no int8 graphs).
    """
    parity_images = [torch.from_numpy(image) for image in read_images(val_test["uri"].head(config.parity_images))]
    exported = export_onnx(classifier, calibration, decision_threshold, parity_images, config)
    exported.adaptive = export_adaptive(
        classifier,
        calibration,
        parity_images,
        read_images(val_select["uri"]),
        val_select["label"].to_numpy(),
        config,
        bootstrap_groups(val_select),
    )
    if config.int8.enabled and val_calib is not None:
        calibration_images = list(read_images(val_calib["uri"].head(config.int8.calibration_images)))
        exported.int8 = export_int8(exported, calibration_images, config.int8)
    labels = val_test["label"].to_numpy()
    outcome, speed, scores = measure_serving(exported, read_images(val_test["uri"]), labels, config.threads)
    exported.adaptive.metadata.val_test, exported.adaptive.metadata.speed = outcome, speed
    lines = exported.adaptive.metadata.summary_lines()
    if exported.int8 is not None:
        select_scores, _ = score_serving_paths(exported, read_images(val_select["uri"]), config.threads, "int8 guard")
        pooled = {path: np.concatenate([scores[path], select_scores[path]]) for path in scores}
        labels = np.concatenate([labels, val_select["label"].to_numpy()])
        checks = int8_guard_checks("val_test+val_select", pooled, labels, config.int8.max_mcc_drop)
        served, reason = guard_decision(checks)
        exported.int8.metadata = exported.int8.metadata.model_copy(
            update={"checks": checks, "served": served, "reason": reason}
        )
        lines += exported.int8.metadata.summary_lines()
    for line in lines:
        logger.info("%s", line)
    return exported
