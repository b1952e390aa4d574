"""How often SCRC-I misses its targets over many calibration draws: the PAC guarantee, measured.

    python -m benchmarks.scrc_guarantee [--json] [--draws 2000] [--population 200000]

A synthetic model (labels drawn from sigmoid(z), the model's P(roadwork) an over-confident, noisy
sigmoid(2z + noise), the same as the conformal tests) gives a large labelled pool taken as the population.
For each calibration size, alpha and delta, SCRC-I is refitted on ``--draws`` calibration samples drawn
with replacement from the pool and judged on the whole pool
(:func:`stage1_core.evaluation.conformal.check_scrc_guarantee`): the share of draws whose true selection
rate is below the target, and whose true miscoverage among the selected exceeds alpha, must each stay at
or below delta (up to Monte Carlo error, about sqrt(delta (1 - delta) / draws)).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.special import expit

from stage1_core.evaluation.conformal import SCRCConfig, check_scrc_guarantee

SIZES = (100, 300, 1000)
ALPHAS = (0.05, 0.1)
DELTAS = (0.05, 0.1)
TARGET_SELECTION_RATE = 0.7


def population(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(roadwork)) of the synthetic pool."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size)
    labels = (rng.random(size) < expit(z)).astype(int)
    return labels, expit(2.0 * z + rng.normal(0.0, 0.7, size))


def run(draws: int, population_size: int) -> list[dict[str, float | int]]:
    labels, probs = population(population_size)
    rows = []
    for n in SIZES:
        for alpha in ALPHAS:
            for delta in DELTAS:
                config = SCRCConfig(target_selection_rate=TARGET_SELECTION_RATE, alpha=alpha, delta=delta)
                check = check_scrc_guarantee(labels, probs, config, n_calibration=n, n_draws=draws, seed=1)
                rows.append({"alpha": alpha, "delta": delta} | check.model_dump())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON list of the figures")
    parser.add_argument("--draws", type=int, default=2000, help="calibration draws per setting (default 2,000)")
    parser.add_argument("--population", type=int, default=200_000, help="size of the synthetic pool")
    args = parser.parse_args()
    rows = run(args.draws, args.population)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"SCRC-I, target selection rate {TARGET_SELECTION_RATE}, {args.draws} calibration draws per row")
    print("    n  alpha  delta | P(rate < target)  P(risk > alpha) | mean rate  mean risk | infeasible")
    for row in rows:
        print(
            f"{row['n_calibration']:5d}  {row['alpha']:5.2f}  {row['delta']:5.2f} | "
            f"{row['selection_violation_rate']:16.4f}  {row['risk_violation_rate']:15.4f} | "
            f"{row['mean_selection_rate']:9.4f}  {row['mean_risk']:9.4f} | {row['n_infeasible']:10d}"
        )


if __name__ == "__main__":
    main()
