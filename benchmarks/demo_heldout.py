"""Score an exported model on a large held-out draw of demo scenes, one frame per scene.

    python -m benchmarks.demo_heldout BUNDLE_DIR [--images 1500] [--seed 777] [--json]

Why: the demo run's val_test holds about a hundred images in sequences of four frames, i.e. a few dozen
independent scenes, so its MCC moves by +-0.15 between data seeds. This draws fresh scenes from the same
generator (NATIX layout, a seed no pipeline config uses, one frame per sequence so every image is an
independent scene) and scores the bundle as served, all ten views and adaptive, with bootstrap intervals:
what the demo model is really worth, how often adaptive serving answers from the global view alone (the
skip rate), and its recall per object size class (where the misses are).

A bundle with int8 graphs is scored in fp32 and in int8, and the int8 accuracy guard runs on these scenes
too (MCC drop within the budget the export used, decisions changed, max |dP|, per serving path). The export
step decided on the run's val_test and val_select, a few hundred images in the demo run, where one changed
decision moves MCC by about a point; these scenes resolve a tenth of that. If the bundle serves int8 and the
guard fails here, the command says so and exits with 1: serve it with ``PredictorConfig(precision="fp32")`` and
look at the calibration images.
``BUNDLE_DIR`` is the exported model folder the run prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from stage1_core.common.cli import EXIT_FINDING, EXIT_OK, configure_logging, positive_int, run_printing_command
from stage1_core.common.metrics import bootstrap_indices, compute_metrics
from stage1_core.demo.config import SIZE_CLASSES, DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.export.quantization import Int8Config, guard_decision, precision_check
from stage1_core.serving.bundle import ExportedModel, PrecisionCheck
from stage1_core.serving.predictor import Predictor, PredictorConfig

METRICS = ("mcc", "accuracy", "auroc", "ece")
MODES = ("full", "adaptive")  # the predictor's modes, which are the int8 guard's serving paths
N_BOOTSTRAP = 1000


def draw_scenes(directory: Path, n_images: int, seed: int) -> pd.DataFrame:
    """``n_images`` independent demo scenes (NATIX parquet layout), one row each.

    A row holds the image bytes, the label and the drawn object size class.
    """
    generate_demo_dataset(
        directory, DemoDataConfig(seed=seed, n_images=n_images, frames_per_sequence=1, test_fraction=0.0)
    )
    shards = sorted(path for path in directory.rglob("*.parquet") if path.name != "demo_truth.parquet")
    scenes = pd.concat([pd.read_parquet(path, columns=["id", "image", "label"]) for path in shards], ignore_index=True)
    truth = pd.read_parquet(directory / "demo_truth.parquet", columns=["id", "size_class"])
    return scenes.merge(truth, on="id", how="left", validate="one_to_one")


def serve(exported: ExportedModel, scenes: pd.DataFrame, mode: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """P(roadwork) and views spent per scene, the bundle served in ``mode`` at ``precision``."""
    predictor = Predictor(exported, PredictorConfig(mode=mode, precision=precision))
    predictions = [
        predictor.predict_bytes(image["bytes"], f"scene {row}")
        for row, image in enumerate(tqdm(scenes["image"], desc=f"{mode} {precision}", unit="img"))
    ]
    return np.array([p.p_roadwork for p in predictions]), np.array([p.views for p in predictions])


def figures(scenes: pd.DataFrame, probs: np.ndarray, views: np.ndarray) -> dict[str, float]:
    """Metrics with 95% intervals, views per image, the skip rate with its interval, recall by size class."""
    report = compute_metrics(scenes["label"].to_numpy(), probs, n_bootstrap=N_BOOTSTRAP)
    skipped = (views == 1).astype(np.float64)
    resampled = skipped[bootstrap_indices(skipped.size, N_BOOTSTRAP, seed=0)].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    result = {
        "views_per_image": float(views.mean()),
        "skip_rate": float(skipped.mean()),
        "skip_rate_ci_low": float(low),
        "skip_rate_ci_high": float(high),
    }
    is_positive = (scenes["label"] == 1).to_numpy()
    for size in SIZE_CLASSES:
        positives = is_positive & (scenes["size_class"] == size).to_numpy()
        result[f"recall_{size}"] = float(np.mean(probs[positives] >= 0.5)) if positives.any() else float("nan")
    for name in METRICS:
        metric = report.metric(name)
        result |= {name: metric.value, f"{name}_ci_low": metric.ci_low, f"{name}_ci_high": metric.ci_high}
    return result


def heldout_guard(
    exported: ExportedModel, scenes: pd.DataFrame, scores: dict[tuple[str, str], np.ndarray]
) -> list[PrecisionCheck]:
    """The int8 guard's checks on the held-out scenes, held to the budget the export used."""
    budgets = [check.max_mcc_drop for check in exported.int8.metadata.checks] if exported.int8 else []
    budget = max(budgets, default=Int8Config().max_mcc_drop)
    labels = scenes["label"].to_numpy()
    return [
        precision_check("demo_heldout", mode, scores[mode, "fp32"], scores[mode, "int8"], labels, budget)
        for mode in MODES
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path, help="exported model folder (model.onnx, metadata.json, ...)")
    parser.add_argument("--images", type=positive_int, default=1500, help="scenes to draw (default 1500)")
    parser.add_argument(
        "--seed", type=int, default=777, help="generator seed (default 777: no pipeline config uses it)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    return run_printing_command("benchmarks.demo_heldout", lambda out: _benchmark(args, out), args.json)


def _benchmark(args: argparse.Namespace, out: TextIO) -> int:
    Predictor.from_bundle(args.bundle)  # a bundle that cannot be served is named before minutes of drawing
    with tempfile.TemporaryDirectory(prefix="demo-heldout-") as directory:
        scenes = draw_scenes(Path(directory), args.images, args.seed)
    exported = ExportedModel.load(args.bundle)
    precisions = ("fp32", "int8") if exported.int8 is not None else ("fp32",)
    served = {(mode, precision): serve(exported, scenes, mode, precision) for mode in MODES for precision in precisions}
    results = {f"{mode} {precision}": figures(scenes, *served[mode, precision]) for mode, precision in served}
    checks = (
        heldout_guard(exported, scenes, {key: probs for key, (probs, _) in served.items()}) if exported.int8 else []
    )
    decision, reason = guard_decision(checks) if checks else ("fp32", "no int8 graphs in the bundle")
    bundle_serves = exported.served().precision
    contradicted = bundle_serves == "int8" and decision != "int8"
    if args.json:
        print(
            json.dumps(
                {
                    "images": len(scenes),
                    "positive_rate": float(scenes["label"].mean()),
                    "seed": args.seed,
                    **results,
                    "int8_guard": [check.model_dump() for check in checks],
                    "int8_guard_decision": decision,
                    "bundle_serves": bundle_serves,
                }
            ),
            file=out,
        )
        return EXIT_FINDING if contradicted else EXIT_OK
    print(
        f"{len(scenes)} held-out demo scenes (seed {args.seed}, one frame each, "
        f"{scenes['label'].mean():.0%} roadwork), threshold 0.5, 95% bootstrap CI"
    )
    print(f"{'mode':<15}{'views/img':>10}{'skip rate':>22}" + "".join(f"{name:>26}" for name in METRICS))
    for name, values in results.items():
        cells = "".join(
            f"{values[n]:>8.3f} [{values[n + '_ci_low']:.3f}, {values[n + '_ci_high']:.3f}]" for n in METRICS
        )
        skip = f"{values['skip_rate']:.3f} [{values['skip_rate_ci_low']:.3f}, {values['skip_rate_ci_high']:.3f}]"
        print(f"{name:<15}{values['views_per_image']:>10.2f}{skip:>22}{cells}")
    positives = scenes[scenes["label"] == 1]["size_class"].value_counts()
    print(
        f"\nrecall by size class of the drawn roadwork\n{'size':<10}{'scenes':>8}"
        + "".join(f"{name:>15}" for name in results)
    )
    for size in SIZE_CLASSES:
        print(
            f"{size:<10}{positives.get(size, 0):>8}"
            + "".join(f"{results[name][f'recall_{size}']:>15.2f}" for name in results)
        )
    print(
        f"\nint8 guard on these scenes: {decision} ({reason}); the bundle serves {bundle_serves} (the export's guard)"
    )
    for check in checks:
        print(
            f"  {check.path:<9} MCC {check.mcc_fp32:.4f} fp32 -> {check.mcc_int8:.4f} int8 "
            f"(drop {check.mcc_drop:+.4f}, budget {check.max_mcc_drop}), "
            f"{check.decisions_changed}/{check.n_images} decisions changed, "
            f"max |dP| {check.max_abs_diff:.4f}, mean {check.mean_abs_diff:.4f}"
        )
    if contradicted:
        print("  the bundle serves int8 but the guard fails on these scenes: serve it with precision='fp32'")
    elif decision == "int8" and bundle_serves == "fp32":
        print("  int8 keeps the budget on these scenes, which resolve it better than the export's guard sets")
    return EXIT_FINDING if contradicted else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
