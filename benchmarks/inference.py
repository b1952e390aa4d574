"""Inference speed: PyTorch eager, ONNX Runtime fp32 and static int8; single-view, fixed 10-view and adaptive.

    python -m benchmarks.inference [--json] [--images 120] [--requests 24] [--batch 8] [--threads N]
                                   [--no-compile] [--vit-s]

ONNX Runtime runs the graphs the bundle serves: fp32 (with onnxscript's ORT fusions of attention and GELU:
``ExportConfig.fuse_for_onnxruntime``, on by default) and their static int8 versions (``export/quantization.py``:
QDQ, the backbone's MatMul and Conv with uint8 activations and int8 per-channel weights, calibrated on the
linear-probe share's images), side by side with the plain exporter's graph (standard operators only). The int8
graphs are a different model numerically: the accuracy guard's figures on the val_test and val_select shares
(MCC drop, decisions changed, max |dP|, per serving path) are printed with them, and "served" is what a bundle
would serve: int8 where the guard passes, else fp32. On a CUDA machine a ViT-B-sized config (hidden 768,
12 layers, 12 heads, 224 px views, random init) also runs in PyTorch FP16 (autocast) and as a TensorRT FP16 engine when
``tensorrt`` is installed; ``--vit-s`` adds a random-init ViT-S/14 at 224 px on the CPU (eager, ONNX Runtime
fp32 and int8, fixed 10-view): how the int8 gain scales with the model.

Images come from the demo generator (640x480 street scenes). The model is the demo backbone
(``dinov2-demo``, the committed pre-trained demo weights, view 112) with its linear head fitted by
logistic regression on the global-view features of a train share of the images, so that global-view
confidence means something for the adaptive path; speed does not depend on the weights, the adaptive
skip rate does. The adaptive margin bounds (one per side of the threshold) are fitted on a val_select
share (within 1 MCC point of fixed 10-view on 75% of its resamples) and its MCC cost is measured on
the held-out val_test share, where all timings run.

Per configuration: images/s over val_test in batches of ``--batch``, p50/p99 latency of single-image
requests (the miner case; decoding excluded, it is the same for all), peak resident memory while
measuring (Linux: the high-water mark is reset before each configuration), and views per image; then,
from one profiled pass (ONNX Runtime's profiler, ``torch.profiler`` for eager), the share of operator time
in GEMM (MatMul, Conv and their int8 forms) and where the rest goes. Targets (CPU, demo backbone): the
served ONNX Runtime graphs >= 1.5x the images/s of eager fp32 for fixed 10-view at <= 1 MCC point lost;
adaptive >= 3x the images/s of fixed 10-view.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, Dinov2Config

from benchmarks.command import run_benchmark
from benchmarks.memory import process_rss_mb, reset_peak_rss
from stage1_core.common.cli import configure_logging, positive_int
from stage1_core.common.logit_map import LogitMap
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.export.exporter import (
    ExportConfig,
    GlobalViewGraph,
    ServingGraph,
    TensorRTConfig,
    TensorRTRunner,
    TilesGraph,
    build_tensorrt_engine,
    export_adaptive,
    export_int8,
    export_onnx,
    image_to_canvas,
    int8_guard_checks,
    measure_serving,
    score_serving_paths,
    tensorrt_unavailable,
)
from stage1_core.export.quantization import Int8Config, guard_decision
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.serving.adaptive import AdaptiveOutcome, AdaptivePolicy, run_adaptive
from stage1_core.serving.bundle import (
    ADAPTIVE_SPEEDUP_TARGET,
    INPUT_NAME,
    AdaptiveSessions,
    PrecisionCheck,
    cpu_session,
)
from stage1_core.serving.predictor import PredictorConfig, decode_image

UNCALIBRATED = LogitMap.from_temperature(1.0)  # speed does not depend on the calibration

logger = logging.getLogger(__name__)

ONNX_TARGET = 1.5
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 [B, 3, H, W] -> (P(roadwork), views per image)
Key = tuple[str, str]  # (backend, views)

# operator -> what it is, for the time shares (ONNX Runtime op types and PyTorch aten ops; the rest is "other")
OPERATOR_KINDS = {
    **dict.fromkeys(
        ["MatMul", "Gemm", "FusedMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "Conv"], "GEMM"
    ),
    **dict.fromkeys(["ConvInteger", "QLinearConv", "aten::addmm", "aten::mm", "aten::bmm"], "GEMM"),
    **dict.fromkeys(["aten::mkldnn_convolution", "aten::convolution", "aten::_convolution"], "GEMM"),
    **dict.fromkeys(["MultiHeadAttention", "Attention", "Softmax"], "attention"),
    **dict.fromkeys(["aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax"], "attention"),
    **dict.fromkeys(["BiasGelu", "Gelu", "FastGelu", "Erf", "aten::gelu"], "GELU"),
    **dict.fromkeys(["LayerNormalization", "SkipLayerNormalization", "aten::native_layer_norm"], "LayerNorm"),
    **dict.fromkeys(["Resize", "aten::_upsample_bilinear2d_aa"], "resize"),
    **dict.fromkeys(["QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"], "(de)quantize"),
}
KINDS = ("GEMM", "attention", "GELU", "LayerNorm", "resize", "(de)quantize", "other")


class Measurement(BaseModel):
    """One backend x view mode."""

    backend: str
    views: str
    images_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    peak_over_start_mb: float | None = None
    views_per_image: float | None = None
    warmup_s: float | None = None  # the untimed first round (includes compilation for torch.compile)
    error: str | None = None


class OperatorShares(BaseModel):
    """Where the operator time of one configuration goes (one profiled pass over val_test)."""

    backend: str
    views: str
    total_ms: float  # summed operator time (ONNX Runtime kernels; PyTorch self CPU time)
    shares: dict[str, float]  # kind (GEMM, attention, ...) -> share of total_ms
    top_other: list[tuple[str, float]]  # the largest operators in "other", with their shares


class BenchmarkResult(BaseModel):
    threads: int
    n_images: dict[str, int]
    batch: int
    requests: int
    rounds: int
    memory_note: str
    adaptive_policy: AdaptivePolicy
    adaptive_val_test: AdaptiveOutcome
    onnxruntime_fusions: dict[str, int]
    int8_quantization: str
    int8_cpu_flags: list[str]
    int8_guard: list[PrecisionCheck]  # int8 against fp32 on val_test, per serving path
    served: str  # the backend a bundle would serve: onnxruntime-int8 where the guard passes, else onnxruntime
    served_reason: str
    cuda: str  # the ViT-B FP16 / TensorRT branch: what ran, or why not
    vit_s: str  # the ViT-S/14 branch: what ran, or why not
    measurements: list[Measurement]
    operators: list[OperatorShares]
    ratios: dict[str, float | None]
    verdicts: list[str]


def demo_images(n_images: int, seed: int, directory: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Generate demo scenes and decode them like the predictor does: (uint8 [3, H, W] images, labels)."""
    generate_demo_dataset(directory, DemoDataConfig(n_images=n_images, seed=seed, test_fraction=0.0))
    table = pq.read_table(sorted((directory / "data").glob("*.parquet")), columns=["image", "label"]).to_pydict()
    config = PredictorConfig()
    images = [decode_image(item["bytes"], source=f"demo {i}", config=config) for i, item in enumerate(table["image"])]
    order = np.random.default_rng(seed).permutation(len(images))  # rows are sorted by label
    return [images[i] for i in order], np.asarray(table["label"])[order]


def fit_head(model: RoadworkClassifier, images: list[np.ndarray], labels: np.ndarray) -> None:
    """Logistic regression on global-view features, written into the linear head (a linear probe)."""
    with torch.inference_mode():
        canvases = image_to_canvas(torch.from_numpy(np.stack(images)), model.config.multiview.canvas_size)
        views = torch.nn.functional.interpolate(
            canvases, size=(model.config.multiview.view_size,) * 2, mode="bilinear", antialias=True
        )
        features = model.embed(views).numpy()
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)
    linear = model.head[1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(probe.coef_).float())
        linear.bias.copy_(torch.from_numpy(probe.intercept_).float())


class _Timings:
    """Figures of one configuration gathered over interleaved rounds."""

    def __init__(self, backend: str, views: str) -> None:
        self.backend, self.views = backend, views
        self.latencies: list[float] = []
        self.throughputs: list[float] = []
        self.peaks: list[float] = []
        self.over_start: list[float] = []
        self.views_used: list[np.ndarray] = []
        self.warmup: float | None = None
        self.error: str | None = None

    def result(self) -> Measurement:
        if self.error:
            return Measurement(backend=self.backend, views=self.views, error=self.error)
        return Measurement(
            backend=self.backend,
            views=self.views,
            images_per_s=max(self.throughputs),  # best round: the least disturbed by other load on a shared machine
            p50_ms=float(np.percentile(self.latencies, 50) * 1000),
            p99_ms=float(np.percentile(self.latencies, 99) * 1000),
            peak_rss_mb=max(self.peaks) if self.peaks else None,
            peak_over_start_mb=max(self.over_start) if self.over_start else None,
            views_per_image=float(np.concatenate(self.views_used).mean()),
            warmup_s=self.warmup,
        )


def _round(timings: _Timings, runner: Runner, stacked: np.ndarray, requests: int, batch: int) -> None:
    """One round: single-image requests, then the whole set in batches; the memory high-water mark is reset first."""
    start_rss = process_rss_mb("VmRSS")
    reset_peak_rss()
    for i in range(requests):
        start = time.perf_counter()
        runner(stacked[i % len(stacked)][None])
        timings.latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    for first in range(0, len(stacked), batch):
        timings.views_used.append(runner(stacked[first : first + batch])[1])
    timings.throughputs.append(len(stacked) / (time.perf_counter() - start))
    peak = process_rss_mb("VmHWM")
    if peak is not None and start_rss is not None:
        timings.peaks.append(peak)
        timings.over_start.append(peak - start_rss)


def measure_all(
    runners: dict[tuple[str, str], Runner], images: list[np.ndarray], requests: int, batch: int, rounds: int
) -> list[Measurement]:
    """Warm every configuration up, then time them in ``rounds`` interleaved rounds.

    Interleaving means load from other processes hits all configurations alike.
    """
    stacked = np.stack(images)
    timings = {key: _Timings(*key) for key in runners}
    for rnd in range(rounds + 1):
        for key, runner in runners.items():
            entry = timings[key]
            if entry.error:
                continue
            try:
                if rnd == 0:  # an untimed round: first-call costs and every (re)compilation the timed rounds would hit
                    logger.info("warming up %s %s", *key)
                    start = time.perf_counter()
                    _round(_Timings(*key), runner, stacked, requests, batch)
                    entry.warmup = time.perf_counter() - start
                else:
                    _round(entry, runner, stacked, requests, batch)
            except Exception as error:  # noqa: BLE001 - a backend that fails here (e.g. torch.compile) is reported, not fatal
                entry.error = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        if rnd:
            logger.info("round %d/%d done", rnd, rounds)
    return [entry.result() for entry in timings.values()]


def torch_runners(
    model: RoadworkClassifier,
    single: RoadworkClassifier,
    policy: AdaptivePolicy,
    wrap: Callable[[torch.nn.Module], Callable],
) -> dict[str, Runner]:
    """Eager (``wrap`` = identity) or compiled runners of the three view modes."""
    full_views = model.config.multiview.views_per_image
    fixed, one = wrap(ServingGraph(model, UNCALIBRATED).eval()), wrap(ServingGraph(single, UNCALIBRATED).eval())
    global_graph, tiles_graph = (
        wrap(GlobalViewGraph(model, UNCALIBRATED).eval()),
        wrap(TilesGraph(model, UNCALIBRATED).eval()),
    )

    def global_pass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(output.numpy() for output in global_graph(torch.from_numpy(images)))

    def tiles_pass(canvas: np.ndarray, global_features: np.ndarray) -> np.ndarray:
        return tiles_graph(torch.from_numpy(canvas), torch.from_numpy(global_features)).numpy()

    return {
        "single-view": lambda images: (one(torch.from_numpy(images)).numpy(), np.ones(len(images))),
        f"{full_views}-view": lambda images: (
            fixed(torch.from_numpy(images)).numpy(),
            np.full(len(images), full_views),
        ),
        "adaptive": lambda images: run_adaptive(global_pass, tiles_pass, images, policy),
    }


def operator_shares(key: Key, times: dict[str, float]) -> OperatorShares:
    """Operator times (ms by operator) grouped into kinds, as shares of the total."""
    total = sum(times.values()) or 1.0
    by_kind = Counter({kind: 0.0 for kind in KINDS})
    for operator, ms in times.items():
        by_kind[OPERATOR_KINDS.get(operator, "other")] += ms
    other = sorted(((op, ms / total) for op, ms in times.items() if op not in OPERATOR_KINDS), key=lambda x: -x[1])
    return OperatorShares(
        backend=key[0],
        views=key[1],
        total_ms=total,
        shares={kind: by_kind[kind] / total for kind in KINDS},
        top_other=[(op, round(share, 4)) for op, share in other[:4]],
    )


def onnxruntime_times(sessions: list[onnxruntime.InferenceSession]) -> dict[str, float]:
    """Kernel time (ms) per operator type of profiled sessions, ended here (their profile files are read)."""
    times: Counter[str] = Counter()
    for session in sessions:
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                times[event["args"]["op_name"]] += event["dur"] / 1000
    return dict(times)


def torch_times(runner: Runner, stacked: np.ndarray, batch: int) -> dict[str, float]:
    """Self CPU time (ms) per aten operator of one pass over ``stacked`` in batches."""
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for first in range(0, len(stacked), batch):
            runner(stacked[first : first + batch])
    return {event.key: event.self_cpu_time_total / 1000 for event in profiler.key_averages()}


def profile_onnxruntime(
    graphs: dict[str, bytes | tuple[bytes, bytes]],
    views: dict[str, int],
    policy: AdaptivePolicy | None,
    stacked: np.ndarray,
    batch: int,
    threads: int,
) -> dict[str, dict[str, float]]:
    """Operator times of each view mode of one backend: a graph (fixed views) or a (global, tiles) pair (adaptive)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="roadwork-profile-") as tmp:
        for name, graph in graphs.items():
            prefix = str(Path(tmp) / name)
            if isinstance(graph, tuple):
                pair = AdaptiveSessions(*graph, threads, profile_prefix=prefix)
                sessions = [pair.global_session, pair.tiles_session]
                runner = _adaptive_runner(pair, policy)
            else:
                sessions = [cpu_session(graph, threads, profile_prefix=prefix)]
                runner = _session_runner(sessions[0], views[name])
            for first in range(0, len(stacked), batch):
                runner(stacked[first : first + batch])
            results[name] = onnxruntime_times(sessions)
    return results


def _session_runner(session: onnxruntime.InferenceSession, views: int) -> Runner:
    return lambda images: (session.run(None, {INPUT_NAME: images})[0], np.full(len(images), views))


def _adaptive_runner(sessions: AdaptiveSessions, policy: AdaptivePolicy) -> Runner:
    return lambda images: sessions.predict(images, policy)


def _single_view(model: RoadworkClassifier) -> RoadworkClassifier:
    """The same backbone and head scoring the global view only."""
    single = RoadworkClassifier(
        model.backbone,
        model.config.model_copy(
            update={"multiview": model.config.multiview.model_copy(update={"aggregation": "global_only"})}
        ),
    ).eval()
    single.head = model.head
    return single


def random_vit(hidden: int, heads: int) -> RoadworkClassifier:
    """A randomly initialised 12-layer DINOv2-shaped ViT/14 classifier at 224 px views (ViT-S: 384/6, ViT-B: 768/12)."""
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        patch_size=14,
        image_size=224,
    )
    torch.manual_seed(0)
    return RoadworkClassifier(
        AutoModel.from_config(config, attn_implementation="sdpa"),
        ClassifierConfig(multiview=MultiViewConfig(view_size=224)),
    ).eval()


def cuda_runners(images: list[np.ndarray]) -> tuple[dict[tuple[str, str], Runner], str]:
    """A ViT-B-sized classifier (random init, 224 px views) in PyTorch FP16 on CUDA and as a TensorRT FP16 engine.

    Returns the runners and what ran (or why not): no CUDA device, no tensorrt package, or the engine's error.
    """
    if not torch.cuda.is_available():
        return {}, "skipped: no CUDA device"
    model = random_vit(hidden=768, heads=12)
    classifiers = {"single-view": _single_view(model), f"{model.config.multiview.views_per_image}-view": model}
    runners: dict[tuple[str, str], Runner] = {}
    reason = tensorrt_unavailable()
    status = f"TensorRT {reason}"
    if reason is None:  # ONNX export on the CPU first: the eager runners below move the shared weights to the GPU
        parity = [torch.from_numpy(image) for image in images[:2]]
        try:
            for name, classifier in classifiers.items():
                exported = export_onnx(
                    classifier,
                    UNCALIBRATED,
                    0.5,
                    parity,
                    ExportConfig(parity_images=2, fuse_for_onnxruntime=False, tensorrt=TensorRTConfig(enabled=False)),
                )
                engine = TensorRTRunner(build_tensorrt_engine(exported.onnx_bytes, TensorRTConfig()))
                views = classifier.config.multiview.views_per_image
                runners[("tensorrt fp16 ViT-B", name)] = lambda batch, engine=engine, views=views: (
                    engine(batch),
                    np.full(len(batch), views),
                )
            status = "TensorRT FP16 ran"
        except Exception as error:  # noqa: BLE001 - the TensorRT branch reports its failure next to the figures that did run
            status = f"TensorRT failed: {type(error).__name__}: {error}"
    for name, classifier in classifiers.items():
        graph = ServingGraph(classifier, UNCALIBRATED).eval().cuda()
        views = classifier.config.multiview.views_per_image

        def eager_fp16(
            batch: np.ndarray, graph: ServingGraph = graph, views: int = views
        ) -> tuple[np.ndarray, np.ndarray]:
            with torch.autocast("cuda", dtype=torch.float16):
                return graph(torch.from_numpy(batch).cuda()).float().cpu().numpy(), np.full(len(batch), views)

        runners[("cuda fp16 ViT-B", name)] = eager_fp16
    return runners, f"PyTorch FP16 (autocast) ran on {torch.cuda.get_device_name()}; {status}"


def vit_s_runners(images: list[np.ndarray], threads: int) -> tuple[dict[Key, Runner], dict[Key, dict[str, float]], str]:
    """A random-init ViT-S/14 at 224 px (DINOv2-S shape), fixed 10-view: eager, ONNX Runtime fp32 and static int8.

    Returns the runners, the operator times of the ONNX Runtime graphs (one pass over ``images``), and what ran.
    """
    model = random_vit(hidden=384, heads=6)
    parity = [torch.from_numpy(image) for image in images[:2]]
    exported = export_onnx(
        model, UNCALIBRATED, 0.5, parity, ExportConfig(parity_images=2, tensorrt=TensorRTConfig(enabled=False))
    )
    int8 = export_int8(exported, images[:8], Int8Config())
    fixed = f"{model.config.multiview.views_per_image}-view"
    graphs = {"onnxruntime ViT-S/14": exported.onnx_bytes, "onnxruntime-int8 ViT-S/14": int8.onnx_bytes}
    eager = ServingGraph(model, UNCALIBRATED).eval()
    runners: dict[Key, Runner] = {
        ("eager ViT-S/14", fixed): lambda batch: (eager(torch.from_numpy(batch)).numpy(), np.full(len(batch), 10))
    }
    times = {}
    for backend, graph in graphs.items():
        runners[backend, fixed] = _session_runner(cpu_session(graph, threads), 10)
        times[backend, fixed] = profile_onnxruntime({fixed: graph}, {fixed: 10}, None, np.stack(images), 2, threads)[
            fixed
        ]
    return runners, times, f"ran: random-init ViT-S/14, 224 px views, {len(images)} images, int8 calibrated on 8"


def run(
    n_images: int,
    requests: int,
    batch: int,
    threads: int,
    compile_models: bool,
    rounds: int = 3,
    seed: int = 0,
    vit_s: bool = False,
) -> BenchmarkResult:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = demo_images(n_images, seed, Path(tmp))
    n_train, n_select = int(0.4 * len(images)), int(0.3 * len(images))
    train, select, test = images[:n_train], images[n_train : n_train + n_select], images[n_train + n_select :]
    y_train, y_select, y_test = labels[:n_train], labels[n_train : n_train + n_select], labels[n_train + n_select :]

    model = RoadworkClassifier(load_backbone("dinov2-demo", seed=seed), ClassifierConfig()).eval()
    fit_head(model, train, y_train)
    single = _single_view(model)
    parity_images = [torch.from_numpy(image) for image in select[:4]]
    export_config = ExportConfig(parity_images=4, tensorrt=TensorRTConfig(enabled=False))
    exported = export_onnx(model, UNCALIBRATED, 0.5, parity_images, export_config)
    single_onnx = export_onnx(single, UNCALIBRATED, 0.5, parity_images, export_config)
    plain_onnx = export_onnx(
        model, UNCALIBRATED, 0.5, parity_images, export_config.model_copy(update={"fuse_for_onnxruntime": False})
    )
    exported.adaptive = export_adaptive(model, UNCALIBRATED, parity_images, select, y_select, export_config)
    exported.int8 = export_int8(exported, train[: export_config.int8.calibration_images], export_config.int8)
    policy = exported.adaptive.metadata.policy
    test_outcome, _, test_scores = measure_serving(exported, test, y_test, threads)
    select_scores, _ = score_serving_paths(exported, select, threads, desc="int8 guard")
    pooled = {path: np.concatenate([test_scores[path], select_scores[path]]) for path in test_scores}
    guard_labels = np.concatenate([y_test, y_select])
    checks = int8_guard_checks("val_test+val_select", pooled, guard_labels, export_config.int8.max_mcc_drop)
    decision, reason = guard_decision(checks)
    served = "onnxruntime-int8" if decision == "int8" else "onnxruntime"
    int8 = exported.int8

    full_views = model.config.multiview.views_per_image
    fixed = f"{full_views}-view"
    graphs = {
        "onnxruntime": {
            "single-view": single_onnx.onnx_bytes,
            fixed: exported.onnx_bytes,
            "adaptive": (exported.adaptive.global_onnx, exported.adaptive.tiles_onnx),
        },
        "onnxruntime-int8": {fixed: int8.onnx_bytes, "adaptive": (int8.global_onnx, int8.tiles_onnx)},
        "onnxruntime-plain": {fixed: plain_onnx.onnx_bytes},
    }
    view_counts = {"single-view": 1, fixed: full_views, "adaptive": full_views}
    backends: dict[str, dict[str, Runner]] = {"eager": torch_runners(model, single, policy, lambda module: module)}
    for backend, by_views in graphs.items():
        backends[backend] = {
            views: _adaptive_runner(AdaptiveSessions(*graph, threads), policy)
            if isinstance(graph, tuple)
            else _session_runner(cpu_session(graph, threads), view_counts[views])
            for views, graph in by_views.items()
        }
    if compile_models:
        backends["torch.compile"] = torch_runners(
            model, single, policy, lambda module: torch.compile(module, dynamic=True)
        )
    runners = {(backend, views): runner for backend, by_views in backends.items() for views, runner in by_views.items()}
    cuda, cuda_status = cuda_runners(test)
    runners |= cuda
    vit_s_status, vit_s_times = "skipped: pass --vit-s", {}
    if vit_s:
        vit_s_map, vit_s_times, vit_s_status = vit_s_runners(test[:8], threads)
        runners |= vit_s_map
    with torch.inference_mode():
        measurements = measure_all(runners, test, requests, batch, rounds)
    stacked = np.stack(test)
    times = {("eager", views): torch_times(backends["eager"][views], stacked, batch) for views in backends["eager"]}
    for backend, by_views in graphs.items():
        for views, ms in profile_onnxruntime(by_views, view_counts, policy, stacked, batch, threads).items():
            times[backend, views] = ms
    times |= vit_s_times
    ratios, verdicts = _ratios(measurements, full_views, served, checks)
    return BenchmarkResult(
        threads=threads,
        n_images={
            "train (linear probe, int8 calibration)": len(train),
            "val_select (adaptive fit, int8 guard)": len(select),
            "val_test (timed, int8 guard)": len(test),
        },
        batch=batch,
        requests=requests,
        rounds=rounds,
        memory_note=(
            "peak resident set while measuring (high-water mark reset per configuration and round; "
            "includes the process baseline); +MB: over the resident set at the start"
        ),
        adaptive_policy=policy,
        adaptive_val_test=test_outcome,
        onnxruntime_fusions=exported.metadata.onnxruntime_fusions,
        int8_quantization=exported.int8.metadata.quantization,
        int8_cpu_flags=exported.int8.metadata.cpu_flags,
        int8_guard=checks,
        served=served,
        served_reason=reason,
        cuda=cuda_status,
        vit_s=vit_s_status,
        measurements=measurements,
        operators=[operator_shares(key, ms) for key, ms in times.items()],
        ratios=ratios,
        verdicts=verdicts,
    )


def _ratios(
    measurements: list[Measurement], full_views: int, served: str, checks: list[PrecisionCheck]
) -> tuple[dict[str, float | None], list[str]]:
    speed = {(m.backend, m.views): m.images_per_s for m in measurements}

    def ratio(a: Key, b: Key) -> float | None:
        return speed[a] / speed[b] if speed.get(a) and speed.get(b) else None

    fixed = f"{full_views}-view"
    ratios = {
        f"served ({served}) / eager ({fixed})": ratio((served, fixed), ("eager", fixed)),
        f"onnxruntime / eager ({fixed})": ratio(("onnxruntime", fixed), ("eager", fixed)),
        f"onnxruntime-int8 / eager ({fixed})": ratio(("onnxruntime-int8", fixed), ("eager", fixed)),
        f"onnxruntime-int8 / onnxruntime ({fixed})": ratio(("onnxruntime-int8", fixed), ("onnxruntime", fixed)),
        f"onnxruntime / onnxruntime-plain ({fixed})": ratio(("onnxruntime", fixed), ("onnxruntime-plain", fixed)),
        f"served adaptive / eager ({fixed})": ratio((served, "adaptive"), ("eager", fixed)),
        f"tensorrt / cuda fp16 ViT-B ({fixed})": ratio(("tensorrt fp16 ViT-B", fixed), ("cuda fp16 ViT-B", fixed)),
        f"onnxruntime ViT-S/14 / eager ViT-S/14 ({fixed})": ratio(
            ("onnxruntime ViT-S/14", fixed), ("eager ViT-S/14", fixed)
        ),
        f"onnxruntime-int8 ViT-S/14 / eager ViT-S/14 ({fixed})": ratio(
            ("onnxruntime-int8 ViT-S/14", fixed), ("eager ViT-S/14", fixed)
        ),
        f"onnxruntime-int8 ViT-S/14 / onnxruntime ViT-S/14 ({fixed})": ratio(
            ("onnxruntime-int8 ViT-S/14", fixed), ("onnxruntime ViT-S/14", fixed)
        ),
    }
    for backend in sorted({m.backend for m in measurements}):
        for views in ("adaptive", "single-view"):
            if (backend, views) in speed:
                ratios[f"{views} / {fixed} ({backend})"] = ratio((backend, views), (backend, fixed))
    ratios[f"torch.compile / eager ({fixed})"] = ratio(("torch.compile", fixed), ("eager", fixed))
    verdicts = []
    for name, target in [
        (f"served ({served}) / eager ({fixed})", ONNX_TARGET),
        (f"adaptive / {fixed} ({served})", ADAPTIVE_SPEEDUP_TARGET),
        (f"adaptive / {fixed} (eager)", ADAPTIVE_SPEEDUP_TARGET),
    ]:
        value = ratios.get(name)
        if value is None:
            verdicts.append(f"{name}: not measured")
        elif value >= target:
            verdicts.append(f"{name}: {value:.2f}x, target {target}x met")
        else:
            percent_short = 100 * (1 - value / target)
            verdicts.append(
                f"{name}: {value:.2f}x, target {target}x MISSED by {target - value:.2f}x ({percent_short:.0f}% short)"
            )
    verdicts += [
        f"int8 MCC drop on {check.dataset} ({check.path}): {check.mcc_drop:+.4f}, budget {check.max_mcc_drop}: "
        f"{'met' if check.passed else 'MISSED'}"
        for check in checks
    ]
    return ratios, verdicts


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: BenchmarkResult) -> None:
    print(
        f"threads {result.threads}, batch {result.batch}, {result.requests} single-image requests "
        f"x {result.rounds} rounds; images: {result.n_images}"
    )
    print(
        f"{'backend':<20}{'views':<13}{'img/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'peak MB':>9}{'+MB':>7}{'views/img':>10}{'warmup s':>10}"
    )
    for m in result.measurements:
        if m.error:
            print(f"{m.backend:<20}{m.views:<13}  failed: {m.error}")
            continue
        print(
            f"{m.backend:<20}{m.views:<13}{_format(m.images_per_s, '8.2f')}"
            f"{_format(m.p50_ms, '9.1f')}{_format(m.p99_ms, '9.1f')}"
            f"{_format(m.peak_rss_mb, '9.0f')}{_format(m.peak_over_start_mb, '7.0f')}"
            f"{_format(m.views_per_image, '10.2f')}{_format(m.warmup_s, '10.1f')}"
        )
    print(
        f"onnxruntime (the bundle's graphs) fusions: {result.onnxruntime_fusions or 'none'}; "
        f"CUDA branch: {result.cuda}; ViT-S/14 branch: {result.vit_s}"
    )
    print(f"onnxruntime-int8: {result.int8_quantization}; CPU int8 instructions: {' '.join(result.int8_cpu_flags)}")
    for check in result.int8_guard:
        print(
            f"  guard on {check.dataset} ({check.n_images} images), {check.path}: MCC {check.mcc_fp32:.3f} fp32 -> "
            f"{check.mcc_int8:.3f} int8 (drop {check.mcc_drop:+.4f}), {check.decisions_changed} decisions changed, "
            f"|dP| max {check.max_abs_diff:.4f}, mean {check.mean_abs_diff:.4f}"
        )
    print(f"  served: {result.served} ({result.served_reason})")
    print("operator time by kind (one profiled pass; other: its largest operators)")
    print(f"{'backend':<26}{'views':<10}{'ms':>8}" + "".join(f"{kind:>13}" for kind in KINDS))
    for shares in result.operators:
        cells = "".join(f"{shares.shares[kind]:>13.1%}" for kind in KINDS)
        other = ", ".join(f"{op} {share:.1%}" for op, share in shares.top_other)
        print(f"{shares.backend:<26}{shares.views:<10}{shares.total_ms:>8.0f}{cells}   ({other})")
    print("ratios (images/s):")
    for name, value in result.ratios.items():
        print(f"  {name:<60} {_format(value, '.2f')}x")
    policy, outcome = result.adaptive_policy, result.adaptive_val_test
    fitted = policy.fitted_on
    print(
        f"adaptive: {policy.describe()} (fitted on val_select: skip {fitted.skip_rate:.0%}, "
        f"MCC {fitted.mcc_full:.3f} -> {fitted.mcc_adaptive:.3f}); val_test: skip {outcome.skip_rate:.0%}, "
        f"{outcome.views_per_image:.2f} views/image, "
        f"MCC {outcome.mcc_full:.3f} -> {outcome.mcc_adaptive:.3f} (drop {outcome.mcc_drop:+.3f})"
    )
    for verdict in result.verdicts:
        print(f"  {verdict}")
    print(f"memory: {result.memory_note}")


def main(argv: list[str] | None = None) -> int:
    """Command line; the exit-code contract of ``stage1_core.common.cli`` (0 when measured)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    parser.add_argument(
        "--images", type=positive_int, default=120, help="demo images: 40%% linear probe, 30%% adaptive fit, 30%% timed"
    )
    parser.add_argument(
        "--requests", type=positive_int, default=24, help="single-image requests timed per configuration"
    )
    parser.add_argument("--batch", type=positive_int, default=8, help="images per call for the throughput figure")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=torch.get_num_threads(),
        help="intra-op threads for PyTorch and ONNX Runtime alike",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="interleaved timing rounds; images/s is the best round"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (its compilation takes minutes on a small CPU)"
    )
    parser.add_argument(
        "--vit-s",
        action="store_true",
        help="also time a random-init ViT-S/14 at 224 px, fixed 10-view (eager, ONNX Runtime fp32 and int8)",
    )
    args = parser.parse_args(argv)
    configure_logging(logging.INFO if not args.json else logging.WARNING)
    logging.getLogger("torch").setLevel(logging.WARNING)

    return run_benchmark(
        "benchmarks.inference",
        lambda: run(
            args.images, args.requests, args.batch, args.threads, not args.no_compile, args.rounds, vit_s=args.vit_s
        ),
        print_table,
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
