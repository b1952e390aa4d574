"""Export of the whole serving path to ONNX, checked against PyTorch with ONNX Runtime.

The exported graph goes from a uint8 RGB image tensor of any size to P(roadwork): resize to the
canvas, normalisation, multi-view crops, backbone, head, top-K aggregation and calibration
calibration are all inside, so a server needs nothing but ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import tempfile
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import torch
from pydantic import BaseModel
from torch.nn import functional as F

from stage1_core.calibration import LogitMap
from stage1_core.images import clamp_unit
from stage1_core.model import RoadworkClassifier

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "p_roadwork"


class ExportConfig(BaseModel):
    """ONNX export settings and the parity bar against PyTorch."""

    opset: int = 18
    parity_tolerance: float = 1e-4
    parity_images: int = 16


class ParityReport(BaseModel):
    """Largest difference of probabilities between the exported model and PyTorch on real images."""

    runtime: str
    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    passed: bool


class ExportMetadata(BaseModel):
    """What a server needs to know about the exported model, and how it was checked."""

    opset: int
    input_spec: str
    output_spec: str
    canvas_size: int
    views_per_image: int
    calibration: LogitMap
    decision_threshold: float
    parity: list[ParityReport]
    tensorrt: str
    torch_version: str
    onnxruntime_version: str


class ExportedModel:
    """An ONNX model and its metadata; stored as ``model.onnx`` + ``metadata.json``."""

    def __init__(self, onnx_bytes: bytes, metadata: ExportMetadata) -> None:
        self.onnx_bytes = onnx_bytes
        self.metadata = metadata

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.onnx").write_bytes(self.onnx_bytes)
        (directory / "metadata.json").write_text(self.metadata.model_dump_json(indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ExportedModel:
        metadata = ExportMetadata.model_validate(json.loads((directory / "metadata.json").read_text()))
        return cls((directory / "model.onnx").read_bytes(), metadata)

    def log_to_mlflow(self, name: str = "model") -> mlflow.models.model.ModelInfo:
        """Log the ONNX model (with its metadata as an artifact) into the active MLflow run."""
        info = mlflow.onnx.log_model(onnx.load_from_string(self.onnx_bytes), name=name)
        mlflow.log_dict(self.metadata.model_dump(mode="json"), f"{name}_metadata.json")
        return info

    def session(self) -> onnxruntime.InferenceSession:
        """A CPU ONNX Runtime session of the model."""
        return onnxruntime.InferenceSession(self.onnx_bytes, providers=["CPUExecutionProvider"])


class CalibrationLayer(torch.nn.Module):
    """Any calibrator of ``stage1_core.calibration`` in the graph: sigmoid(a * logsigmoid(z) - b * logsigmoid(-z) + c).

    Temperature scaling is a = b = 1/T, c = 0; Dirichlet (ODIR) calibration reduces to this beta form for two classes.
    """

    def __init__(self, calibration: LogitMap) -> None:
        super().__init__()
        self.a, self.b, self.c = float(calibration.a), float(calibration.b), float(calibration.c)

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * F.logsigmoid(logit) - self.b * F.logsigmoid(-logit) + self.c)


class ServingGraph(torch.nn.Module):
    """uint8 ``[B, 3, H, W]`` RGB -> calibrated P(roadwork) ``[B]``."""

    def __init__(self, classifier: RoadworkClassifier, calibration: LogitMap) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.calibrate = CalibrationLayer(calibration)
        self.canvas_size = classifier.config.multiview.canvas_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.classifier(image_to_canvas(image, self.canvas_size)))


def image_to_canvas(image: torch.Tensor, canvas_size: int) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float canvas ``[B, 3, S, S]`` in [0, 1]: the serving graphs' preprocessing."""
    return clamp_unit(F.interpolate(image.float() / 255.0, size=(canvas_size, canvas_size), mode="bilinear", align_corners=False, antialias=True))


def image_dims() -> dict[int, torch.export.Dim]:
    """Dynamic batch, height and width of a uint8 image input (the sizes a server may receive)."""
    return {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=16, max=16384), 3: torch.export.Dim("width", min=16, max=16384)}


def _onnx_bytes(graph: ServingGraph, example: torch.Tensor, opset: int) -> bytes:
    return module_to_onnx(graph, (example,), [INPUT_NAME], [OUTPUT_NAME], {"image": image_dims()}, opset)


def module_to_onnx(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str], dynamic_shapes: dict[str, dict[int, torch.export.Dim]], opset: int) -> bytes:
    """Export ``module`` with the dynamo exporter into one self-contained, checked ONNX model (bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(module, examples, str(path), input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, external_data=False, verbose=False)
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def check_parity(graph: ServingGraph, session: onnxruntime.InferenceSession, images: list[torch.Tensor], tolerance: float) -> ParityReport:
    """Compare ONNX Runtime with PyTorch one image at a time (each at its own size) and as one resized batch."""
    diffs = []
    with torch.inference_mode():
        for image in images:
            reference = graph(image.unsqueeze(0)).numpy()
            exported = session.run(None, {INPUT_NAME: image.unsqueeze(0).numpy()})[0]
            diffs.append(np.abs(reference - exported))
        height, width = images[0].shape[1:]
        batch = torch.stack([F.interpolate(image.unsqueeze(0).float(), size=(height, width)).squeeze(0).round().to(torch.uint8) for image in images])
        diffs.append(np.abs(graph(batch).numpy() - session.run(None, {INPUT_NAME: batch.numpy()})[0]))
    flat = np.concatenate([d.ravel() for d in diffs])
    max_diff = float(flat.max())
    return ParityReport(runtime=f"onnxruntime {onnxruntime.__version__} CPU", n_images=len(images), max_abs_diff=max_diff, mean_abs_diff=float(flat.mean()), tolerance=tolerance, passed=max_diff <= tolerance)


def cpu_session(onnx_bytes: bytes, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` bounds its intra-op threads (None: ONNX Runtime's default)."""
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def tensorrt_status() -> str:
    """Why TensorRT was or was not used on this machine."""
    if importlib.util.find_spec("tensorrt") is None:
        return "skipped: the tensorrt package is not installed (pip install '.[tensorrt]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "skipped: no CUDA device"
    return "available: build an FP16 engine with trtexec --onnx=model.onnx --fp16 (engine build not part of this run)"


def export_onnx(classifier: RoadworkClassifier, calibration: LogitMap, decision_threshold: float, images: list[torch.Tensor], config: ExportConfig) -> ExportedModel:
    """Export the serving graph, check ONNX Runtime against PyTorch on ``images`` (uint8 ``[3, H, W]``).

    Raises:
        RuntimeError: when the parity check fails, with the measured difference.
    """
    if not images:
        raise ValueError("export needs at least one real image for the parity check")
    images = images[: config.parity_images]
    graph = ServingGraph(classifier, calibration).eval()
    onnx_bytes = _onnx_bytes(graph, images[0].unsqueeze(0), config.opset)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    parity = check_parity(graph, session, images, config.parity_tolerance)
    if not parity.passed:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {parity.max_abs_diff:.2e} > {parity.tolerance:.0e} on {parity.n_images} images")
    metadata = ExportMetadata(
        opset=config.opset,
        input_spec=f"{INPUT_NAME}: uint8 [batch, 3, height, width] RGB, any size (resized to {graph.canvas_size} px inside)",
        output_spec=f"{OUTPUT_NAME}: float32 [batch], calibrated P(roadwork) in [0, 1]",
        canvas_size=graph.canvas_size,
        views_per_image=classifier.config.multiview.views_per_image,
        calibration=calibration,
        decision_threshold=float(decision_threshold),
        parity=[parity],
        tensorrt=tensorrt_status(),
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
    )
    logger.info("ONNX export: %.1f MB, parity max |diff| %.2e on %d images; TensorRT %s", len(onnx_bytes) / 1e6, parity.max_abs_diff, parity.n_images, metadata.tensorrt)
    return ExportedModel(onnx_bytes, metadata)
