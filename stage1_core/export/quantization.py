"""Static int8 quantization of the serving graphs with ONNX Runtime, and the accuracy guard that decides what is served.

Static, not dynamic: ONNX Runtime's dynamic quantization measures every activation's range at run time
(DynamicQuantizeLinear before each MatMul), which cost as much as the int8 GEMM saved on this model
(0.96-1.00x the fp32 graph, ``benchmarks.inference``). Static quantization fixes the activation scales once,
from calibration images (val_calib: the split whose job is fitting post-training maps; Jacob et al. 2018,
arXiv 1712.05877, for the affine uint8 scheme; ONNX Runtime's QDQ format, per-channel weights as in
Krishnamoorthi 2018, arXiv 1806.08342).

What becomes int8: the MatMul and Conv (patch embedding) nodes of the backbone, with uint8 activations
(asymmetric, MinMax over the calibration images: that calibrator keeps two numbers per tensor and image, where
ONNX Runtime's percentile and entropy calibrators keep every activation of every image in memory) and int8
per-channel weights: the uint8 x int8 pair that AVX-512 VNNI's ``vpdpbusd`` and AMX-INT8 multiply, so no 7-bit
``reduce_range`` is needed on such CPUs (one with AVX2 alone can saturate on this pair: re-run the guard there).
Their outputs are not re-quantized: ONNX Runtime fuses each DequantizeLinear -> MatMul into one
``MatMulIntegerToFloat`` whose fp32 output feeds the bias Add, LayerNorm and GELU directly, which measured as
fast as re-quantized outputs with about a third less probability error. What stays fp32 (measured choices,
``benchmarks.inference`` prints the operator shares): the canvas resize and normalisation (pre-processing, on
pixel values), LayerNorm, the fused attention (softmax inside ONNX Runtime's MultiHeadAttention; quantizing
attention through the plain graph's MatMul + Softmax ran slower), GELU, the head, the view pooling and the
calibration map (tiny, but acting on the logit itself).

The guard compares the int8 graphs with the fp32 ones on labelled images (val_test and val_select at export;
the fresh held-out demo scenes in ``benchmarks.demo_heldout``): the MCC drop at the validator's threshold must
stay within ``max_mcc_drop`` for the fixed and the adaptive path, or the bundle serves fp32 and says why.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from pydantic import Field

from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import VALIDATOR_THRESHOLD
from stage1_core.common.metrics import as_binary_labels, decision_mcc
from stage1_core.serving.bundle import PrecisionCheck, ServingPath

BACKBONE_SCOPE = "classifier.backbone"  # the module path of the backbone in every serving graph (exporter.py)
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # where torch's dynamo exporter records each node's module path


class Int8Config(StrictConfig):
    """Static int8 graphs next to the fp32 ones, and the guard that decides which the bundle serves."""

    enabled: bool = True
    calibration_images: int = Field(
        64, ge=1, description="val_calib images whose activation ranges fix the scales (one image per pass)"
    )
    op_types: list[str] = Field(
        ["MatMul", "Conv"], min_length=1, description="backbone operators made int8 (the GEMMs and the patch embedding)"
    )
    max_mcc_drop: float = Field(
        0.01, ge=0.0, description="largest MCC loss int8 may cost on a guard set, per serving path (1 point = 0.01)"
    )


class _CalibrationFeeds(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a stream of input feeds (one image per feed: sizes may differ)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self.feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def int8_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """This CPU's int8 dot-product instructions (VNNI, AMX) from ``/proc/cpuinfo``; [] where none or no file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(set(flags) & {"avx512_vnni", "avx_vnni", "amx_int8"})


def backbone_nodes(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Names of the nodes of ``op_types`` that the exporter traced inside the backbone module.

    Raises:
        ValueError: no such node (a graph from another exporter, without module scopes).
    """
    wanted = set(op_types)
    names = []
    for node in model.graph.node:
        scopes = next((prop.value for prop in node.metadata_props if prop.key == _NAME_SCOPES), None)
        if node.op_type in wanted and scopes is not None and BACKBONE_SCOPE in ast.literal_eval(scopes):
            names.append(node.name)
    if not names:
        raise ValueError(
            f"no {sorted(wanted)} node inside {BACKBONE_SCOPE!r} in the graph: int8 export needs the module "
            f"scopes torch's dynamo exporter records ({_NAME_SCOPES})"
        )
    return names


def quantize_graph(
    onnx_bytes: bytes, calibration_feeds: Iterable[dict[str, np.ndarray]], config: Int8Config
) -> tuple[bytes, int]:
    """The static int8 (QDQ) version of a serving graph and the number of nodes quantized.

    ``calibration_feeds`` are the graph's inputs by name, one image each (val_calib images, or what the fp32
    global-view graph makes of them for the tiles graph).

    Raises:
        ValueError: the graph has no backbone node of ``config.op_types``.
    """
    model = onnx.load_from_string(onnx_bytes)
    nodes = backbone_nodes(model, config.op_types)
    with tempfile.TemporaryDirectory(prefix="roadwork-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, source)
        quantize_static(
            source,
            target,
            _CalibrationFeeds(calibration_feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=config.op_types,
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": config.op_types},
        )
        return target.read_bytes(), len(nodes)


def precision_check(
    dataset: str,
    path: ServingPath,
    p_fp32: np.ndarray,
    p_int8: np.ndarray,
    labels: np.ndarray,
    max_mcc_drop: float,
    threshold: float = VALIDATOR_THRESHOLD,
) -> PrecisionCheck:
    """What int8 changes on one labelled set for one serving path, against the fp32 graphs it was made from.

    MCC at the validator's threshold (0 when every image is predicted one class, scikit-learn's convention).

    Raises:
        ValueError: labels of one class only (MCC is undefined) or scores that do not match them.
    """
    y = as_binary_labels(labels)
    if y.min() == y.max():
        raise ValueError(f"{dataset}: all {y.size} labels are {int(y[0])}; the int8 guard needs both classes")
    p_fp32, p_int8 = np.asarray(p_fp32, dtype=np.float64), np.asarray(p_int8, dtype=np.float64)
    if not p_fp32.shape == p_int8.shape == y.shape:
        raise ValueError(f"{dataset}: {p_fp32.shape} fp32 and {p_int8.shape} int8 scores for {y.shape} labels")
    difference = np.abs(p_fp32 - p_int8)
    mcc_fp32, mcc_int8 = decision_mcc(p_fp32 > threshold, y), decision_mcc(p_int8 > threshold, y)
    return PrecisionCheck(
        dataset=dataset,
        path=path,
        n_images=int(y.size),
        mcc_fp32=mcc_fp32,
        mcc_int8=mcc_int8,
        mcc_drop=mcc_fp32 - mcc_int8,
        decisions_changed=int(((p_fp32 > threshold) != (p_int8 > threshold)).sum()),
        max_abs_diff=float(difference.max(initial=0.0)),
        mean_abs_diff=float(difference.mean()) if difference.size else 0.0,
        max_mcc_drop=max_mcc_drop,
    )


def guard_decision(checks: list[PrecisionCheck]) -> tuple[Literal["int8", "fp32"], str]:
    """int8 when every check keeps its MCC budget, else fp32; and the reason, naming each failed check."""
    if not checks:
        return "fp32", "no guard set was scored: int8 is not served unchecked"
    failed = [check for check in checks if not check.passed]
    if failed:
        return "fp32", "; ".join(
            f"{check.dataset} {check.path}: MCC {check.mcc_fp32:.4f} -> {check.mcc_int8:.4f} "
            f"(drop {check.mcc_drop:+.4f} > {check.max_mcc_drop}), {check.decisions_changed} decisions changed"
            for check in failed
        )
    worst = max(checks, key=lambda check: check.mcc_drop)
    return "int8", (
        f"every guard check within its MCC budget (largest drop {worst.mcc_drop:+.4f}, {worst.dataset} {worst.path})"
    )
