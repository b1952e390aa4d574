"""Time ``compute_metrics`` (all metrics, bootstrap intervals) against a per-resample scikit-learn loop.

    python -m benchmarks.metrics [--json] [--n 10000] [--resamples 1000]

The vectorised bootstrap should score 10,000 predictions with 1,000 resamples in under 5 s on
a 2-core machine. The naive baseline (a Python loop over resamples calling scikit-learn for the
metrics it has, i.e. fewer metrics than ours) is timed on a few resamples and extrapolated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TextIO

import numpy as np
from sklearn import metrics as skm

from stage1_core.common.cli import EXIT_OK, configure_logging, positive_int, run_printing_command
from stage1_core.common.metrics import bootstrap_indices, compute_metrics

TARGET_SECONDS = 5.0
NAIVE_RESAMPLES = 10


def synthetic_predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """About 85% roadwork (like NATIX), distinct probabilities: the worst case for tie grouping."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.85).astype(int)
    logits = rng.normal(0.0, 1.5, n) + np.where(labels == 1, 2.0, -1.0)
    return labels, 1.0 / (1.0 + np.exp(-1.4 * logits))


def naive_seconds_per_resample(labels: np.ndarray, probs: np.ndarray) -> float:
    """Seconds per resample of a loop that calls scikit-learn once per metric and resample."""
    start = time.perf_counter()
    for row in bootstrap_indices(labels.size, NAIVE_RESAMPLES, seed=1):
        y, p = labels[row], probs[row]
        predicted = p > 0.5
        for score in (
            skm.accuracy_score,
            skm.balanced_accuracy_score,
            skm.matthews_corrcoef,
            skm.precision_score,
            skm.recall_score,
            skm.f1_score,
        ):
            score(y, predicted)
        for score in (skm.roc_auc_score, skm.average_precision_score, skm.brier_score_loss, skm.log_loss):
            score(y, p)
    return (time.perf_counter() - start) / NAIVE_RESAMPLES


def run(n: int, resamples: int) -> dict[str, object]:
    """Time both paths and return the figures."""
    labels, probs = synthetic_predictions(n)
    compute_metrics(labels[:100], probs[:100], n_bootstrap=10)  # warm-up: imports and first-call costs
    start, start_cpu = time.perf_counter(), time.process_time()
    report = compute_metrics(labels, probs, n_bootstrap=resamples)
    vectorised, vectorised_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    naive = naive_seconds_per_resample(labels, probs) * resamples
    return {
        "n": n,
        "n_bootstrap": resamples,
        "vectorised_s": round(vectorised, 3),
        "vectorised_cpu_s": round(vectorised_cpu, 3),  # steadier than wall time on a shared machine
        "target_s": TARGET_SECONDS,
        "within_target": vectorised < TARGET_SECONDS,
        "naive_sklearn_extrapolated_s": round(naive, 3),
        "speedup_vs_naive": round(naive / vectorised, 1),
        "metrics": report.to_flat_dict(),
    }


def print_figures(figures: dict, out: TextIO) -> None:
    print(f"{figures['n']} predictions, {figures['n_bootstrap']} bootstrap resamples, all 16 metrics", file=out)
    print(
        f"  vectorised compute_metrics : {figures['vectorised_s']:8.2f} s   (target < {TARGET_SECONDS:.0f} s: "
        f"{'ok' if figures['within_target'] else 'OVER'}; CPU {figures['vectorised_cpu_s']:.2f} s)",
        file=out,
    )
    print(
        f"  naive sklearn loop, 10 metrics (extrapolated from {NAIVE_RESAMPLES} resamples): "
        f"{figures['naive_sklearn_extrapolated_s']:8.2f} s",
        file=out,
    )
    print(f"  speed-up vs naive          : {figures['speedup_vs_naive']:8.1f} x", file=out)


def main(argv: list[str] | None = None) -> int:
    """Command line; the exit-code contract of ``stage1_core.common.cli`` (0 when measured)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    parser.add_argument("--n", type=positive_int, default=10_000, help="predictions (default 10,000)")
    parser.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1,000)")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)

    def measure(out: TextIO) -> int:
        figures = run(args.n, args.resamples)
        if args.json:
            print(json.dumps(figures), file=out)
        else:
            print_figures(figures, out)
        return EXIT_OK

    return run_printing_command("benchmarks.metrics", measure, args.json)


if __name__ == "__main__":
    sys.exit(main())
