"""Inference speed: PyTorch eager, torch.compile and ONNX Runtime; single-view, fixed 10-view and adaptive multi-view.

    python -m benchmarks.inference [--json] [--images 120] [--requests 24] [--batch 8] [--threads N] [--no-compile]

ONNX Runtime runs the graphs the bundle serves (with onnxscript's ORT fusions of attention and GELU:
``ExportConfig.fuse_for_onnxruntime``, on by default) and, side by side, the plain exporter's graph (standard
operators only) and that graph with ONNX Runtime's dynamic int8 quantization (int8 MatMul weights, activations
quantized per call): a different model numerically, so its probability error and changed decisions on val_test
are printed beside its speed, and it does not count for the fp32 target.
On a CUDA machine a ViT-B-sized config (hidden 768, 12 layers, 12 heads, 224 px views, random init)
also runs in PyTorch FP16 (autocast) and as a TensorRT FP16 engine when ``tensorrt`` is installed.

Images come from the demo generator (640x480 street scenes). The model is the demo backbone
(``dinov2-demo``, the committed pre-trained demo weights, view 112) with its linear head fitted by
logistic regression on the global-view features of a train share of the images, so that global-view
confidence means something for the adaptive path; speed does not depend on the weights, the adaptive
skip rate does. The adaptive margin bounds (one per side of the threshold) are fitted on a val_select
share (within 1 MCC point of fixed 10-view on 75% of its resamples) and its MCC cost is measured on
the held-out val_test share, where all timings run.

Per configuration: images/s over val_test in batches of ``--batch``, p50/p99 latency of single-image
requests (the miner case; decoding excluded, it is the same for all), peak resident memory while
measuring (Linux: the high-water mark is reset before each configuration), and views per image.
Targets (CPU, demo backbone): ONNX Runtime >= 1.5x the images/s of eager for fixed 10-view;
adaptive >= 3x the images/s of fixed 10-view.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
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
    export_onnx,
    image_to_canvas,
    score_both,
    tensorrt_unavailable,
)
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.serving.adaptive import AdaptiveOutcome, AdaptivePolicy, evaluate_adaptive, run_adaptive
from stage1_core.serving.bundle import ADAPTIVE_SPEEDUP_TARGET, INPUT_NAME, cpu_session
from stage1_core.serving.predictor import PredictorConfig, decode_image

UNCALIBRATED = LogitMap.from_temperature(1.0)  # speed does not depend on the calibration

logger = logging.getLogger(__name__)

ONNX_TARGET = 1.5
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 [B, 3, H, W] -> (P(roadwork), views per image)


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


class QuantizedOutcome(BaseModel):
    """What dynamic int8 quantization changes on val_test, against the fp32 graph it was made from."""

    n_images: int
    max_abs_diff: float
    mean_abs_diff: float
    decisions_changed: int  # at threshold 0.5
    mcc_fp32: float
    mcc_int8: float


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
    int8_val_test: QuantizedOutcome
    cuda: str  # the ViT-B FP16 / TensorRT branch: what ran, or why not
    measurements: list[Measurement]
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


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime's dynamic quantization: int8 weights for MatMul/Gemm, activations quantized at run time."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()


def compare_int8(
    fp32: onnxruntime.InferenceSession, int8: onnxruntime.InferenceSession, images: list[np.ndarray], labels: np.ndarray
) -> QuantizedOutcome:
    """Score val_test one image at a time with both graphs and count what quantization changed."""
    p_fp32 = np.concatenate([fp32.run(None, {INPUT_NAME: image[None]})[0] for image in images])
    p_int8 = np.concatenate([int8.run(None, {INPUT_NAME: image[None]})[0] for image in images])
    difference = np.abs(p_fp32 - p_int8)
    return QuantizedOutcome(
        n_images=len(images),
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        decisions_changed=int(((p_fp32 > 0.5) != (p_int8 > 0.5)).sum()),
        mcc_fp32=float(matthews_corrcoef(labels, p_fp32 > 0.5)),
        mcc_int8=float(matthews_corrcoef(labels, p_int8 > 0.5)),
    )


def _session_runner(session: onnxruntime.InferenceSession, views: int) -> Runner:
    return lambda images: (session.run(None, {INPUT_NAME: images})[0], np.full(len(images), views))


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


def cuda_runners(images: list[np.ndarray]) -> tuple[dict[tuple[str, str], Runner], str]:
    """A ViT-B-sized classifier (random init, 224 px views) in PyTorch FP16 on CUDA and as a TensorRT FP16 engine.

    Returns the runners and what ran (or why not): no CUDA device, no tensorrt package, or the engine's error.
    """
    if not torch.cuda.is_available():
        return {}, "skipped: no CUDA device"
    config = Dinov2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=14,
        image_size=224,
    )
    torch.manual_seed(0)
    model = RoadworkClassifier(
        AutoModel.from_config(config, attn_implementation="sdpa"),
        ClassifierConfig(multiview=MultiViewConfig(view_size=224)),
    ).eval()
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


def run(
    n_images: int, requests: int, batch: int, threads: int, compile_models: bool, rounds: int = 3, seed: int = 0
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
    fixed_onnx = export_onnx(model, UNCALIBRATED, 0.5, parity_images, export_config)
    single_onnx = export_onnx(single, UNCALIBRATED, 0.5, parity_images, export_config)
    plain_onnx = export_onnx(
        model, UNCALIBRATED, 0.5, parity_images, export_config.model_copy(update={"fuse_for_onnxruntime": False})
    )
    fixed_session, plain_session = (
        cpu_session(fixed_onnx.onnx_bytes, threads),
        cpu_session(plain_onnx.onnx_bytes, threads),
    )
    int8_session = cpu_session(quantize_int8(plain_onnx.onnx_bytes), threads)
    adaptive = export_adaptive(model, UNCALIBRATED, parity_images, select, y_select, export_config)
    policy = adaptive.metadata.policy
    sessions = adaptive.sessions(threads)
    test_global, test_full = score_both(sessions, test, desc="adaptive val_test")
    test_outcome = evaluate_adaptive(test_global, test_full, y_test, policy)

    full_views = model.config.multiview.views_per_image
    fixed = f"{full_views}-view"
    backends: dict[str, dict[str, Runner]] = {
        "eager": torch_runners(model, single, policy, lambda module: module),
        "onnxruntime": {
            "single-view": _session_runner(cpu_session(single_onnx.onnx_bytes, threads), 1),
            fixed: _session_runner(fixed_session, full_views),
            "adaptive": lambda x: sessions.predict(x, policy),
        },
        "onnxruntime-plain": {fixed: _session_runner(plain_session, full_views)},
        "onnxruntime-int8": {fixed: _session_runner(int8_session, full_views)},
    }
    if compile_models:
        backends["torch.compile"] = torch_runners(
            model, single, policy, lambda module: torch.compile(module, dynamic=True)
        )
    runners = {(backend, views): runner for backend, by_views in backends.items() for views, runner in by_views.items()}
    cuda, cuda_status = cuda_runners(test)
    runners |= cuda
    with torch.inference_mode():
        measurements = measure_all(runners, test, requests, batch, rounds)
    ratios, verdicts = _ratios(measurements, full_views)
    return BenchmarkResult(
        threads=threads,
        n_images={
            "train (linear probe)": len(train),
            "val_select (adaptive fit)": len(select),
            "val_test (timed)": len(test),
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
        onnxruntime_fusions=fixed_onnx.metadata.onnxruntime_fusions,
        int8_val_test=compare_int8(plain_session, int8_session, test, y_test),
        cuda=cuda_status,
        measurements=measurements,
        ratios=ratios,
        verdicts=verdicts,
    )


def _ratios(measurements: list[Measurement], full_views: int) -> tuple[dict[str, float | None], list[str]]:
    speed = {(m.backend, m.views): m.images_per_s for m in measurements}

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        return speed[a] / speed[b] if speed.get(a) and speed.get(b) else None

    fixed = f"{full_views}-view"
    ratios = {
        f"onnxruntime / eager ({fixed})": ratio(("onnxruntime", fixed), ("eager", fixed)),
        f"onnxruntime-plain / eager ({fixed})": ratio(("onnxruntime-plain", fixed), ("eager", fixed)),
        f"onnxruntime / onnxruntime-plain ({fixed})": ratio(("onnxruntime", fixed), ("onnxruntime-plain", fixed)),
        f"onnxruntime-int8 / eager ({fixed})": ratio(("onnxruntime-int8", fixed), ("eager", fixed)),
        f"onnxruntime-int8 / onnxruntime-plain ({fixed})": ratio(
            ("onnxruntime-int8", fixed), ("onnxruntime-plain", fixed)
        ),
        f"tensorrt / cuda fp16 ViT-B ({fixed})": ratio(("tensorrt fp16 ViT-B", fixed), ("cuda fp16 ViT-B", fixed)),
    }
    for backend in sorted({m.backend for m in measurements}):
        for views in ("adaptive", "single-view"):
            if (backend, views) in speed:
                ratios[f"{views} / {fixed} ({backend})"] = ratio((backend, views), (backend, fixed))
    ratios[f"torch.compile / eager ({fixed})"] = ratio(("torch.compile", fixed), ("eager", fixed))
    verdicts = []
    for name, target in [
        (f"onnxruntime / eager ({fixed})", ONNX_TARGET),
        (f"adaptive / {fixed} (onnxruntime)", ADAPTIVE_SPEEDUP_TARGET),
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
        f"onnxruntime (the bundle's graphs) fusions: {result.onnxruntime_fusions or 'none'}; CUDA branch: {result.cuda}"
    )
    int8 = result.int8_val_test
    print(
        f"onnxruntime-int8 on val_test ({int8.n_images} images): |P(int8) - P(plain fp32)| "
        f"max {int8.max_abs_diff:.4f}, mean {int8.mean_abs_diff:.4f}; "
        f"{int8.decisions_changed} decisions changed at 0.5; "
        f"MCC {int8.mcc_fp32:.3f} (fp32) -> {int8.mcc_int8:.3f} (int8)"
    )
    print("ratios (images/s):")
    for name, value in result.ratios.items():
        print(f"  {name:<46} {_format(value, '.2f')}x")
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
    args = parser.parse_args(argv)
    configure_logging(logging.INFO if not args.json else logging.WARNING)
    logging.getLogger("torch").setLevel(logging.WARNING)

    return run_benchmark(
        "benchmarks.inference",
        lambda: run(args.images, args.requests, args.batch, args.threads, not args.no_compile, args.rounds),
        print_table,
        args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
