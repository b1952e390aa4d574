"""Score an exported model on a large held-out draw of demo scenes, one frame per scene.

    python -m benchmarks.demo_heldout BUNDLE_DIR [--images 1500] [--seed 777] [--json]

Why: the demo run's val_test holds about a hundred images in sequences of four frames, i.e. a few dozen
independent scenes, so its MCC moves by +-0.15 between data seeds. This draws fresh scenes from the same
generator (NATIX layout, a seed no pipeline config uses, one frame per sequence so every image is an
independent scene) and scores the bundle as served, all ten views and adaptive, with bootstrap intervals:
what the demo model is really worth, and its recall per object size class (where the misses are).
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

from stage1_core.common.cli import EXIT_OK, configure_logging, positive_int, run_printing_command
from stage1_core.common.metrics import compute_metrics
from stage1_core.demo.config import SIZE_CLASSES, DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.serving.predictor import Predictor, PredictorConfig

METRICS = ("mcc", "accuracy", "auroc", "ece")


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


def score(bundle: Path, scenes: pd.DataFrame, mode: str) -> dict[str, float]:
    """Metrics (with 95% intervals) and views per image of the bundle served in ``mode`` on ``scenes``."""
    predictor = Predictor.from_bundle(bundle, PredictorConfig(mode=mode))
    predictions = [
        predictor.predict_bytes(image["bytes"], f"scene {row}")
        for row, image in enumerate(tqdm(scenes["image"], desc=mode, unit="img"))
    ]
    probs = np.array([p.p_roadwork for p in predictions])
    report = compute_metrics(scenes["label"].to_numpy(), probs, n_bootstrap=1000)
    figures = {"views_per_image": float(np.mean([p.views for p in predictions]))}
    is_positive = (scenes["label"] == 1).to_numpy()
    for size in SIZE_CLASSES:
        positives = is_positive & (scenes["size_class"] == size).to_numpy()
        figures[f"recall_{size}"] = float(np.mean(probs[positives] >= 0.5)) if positives.any() else float("nan")
    for name in METRICS:
        metric = report.metric(name)
        figures |= {name: metric.value, f"{name}_ci_low": metric.ci_low, f"{name}_ci_high": metric.ci_high}
    return figures


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
    results = {mode: score(args.bundle, scenes, mode) for mode in ("full", "adaptive")}
    if args.json:
        print(
            json.dumps(
                {"images": len(scenes), "positive_rate": float(scenes["label"].mean()), "seed": args.seed, **results}
            ),
            file=out,
        )
        return EXIT_OK
    print(
        f"{len(scenes)} held-out demo scenes (seed {args.seed}, one frame each, "
        f"{scenes['label'].mean():.0%} roadwork), threshold 0.5, 95% bootstrap CI"
    )
    print(f"{'mode':<10}{'views/img':>10}" + "".join(f"{name:>26}" for name in METRICS))
    for mode, figures in results.items():
        cells = "".join(
            f"{figures[n]:>8.3f} [{figures[n + '_ci_low']:.3f}, {figures[n + '_ci_high']:.3f}]" for n in METRICS
        )
        print(f"{mode:<10}{figures['views_per_image']:>10.2f}{cells}")
    positives = scenes[scenes["label"] == 1]["size_class"].value_counts()
    print(
        f"\nrecall by size class of the drawn roadwork\n{'size':<10}{'scenes':>8}"
        + "".join(f"{mode:>10}" for mode in results)
    )
    for size in SIZE_CLASSES:
        print(
            f"{size:<10}{positives.get(size, 0):>8}"
            + "".join(f"{results[mode][f'recall_{size}']:>10.2f}" for mode in results)
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
