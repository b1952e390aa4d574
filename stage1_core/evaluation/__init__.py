"""Turning logits into trustworthy probabilities and judging them: calibration, conformal sets and selective
decisions, slices and robustness, ablations, plots and the evaluation report."""
