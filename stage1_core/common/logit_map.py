"""The calibrated-logit map and the validator's threshold: numpy only, so serving imports no fitting code.

Why a module of its own: the exported bundle and the miner apply a fitted calibration with three numbers;
the fitting (scipy, scikit-learn, plots) lives in :mod:`stage1_core.evaluation.calibration` and stays out
of a serving process.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

VALIDATOR_THRESHOLD = 0.5  # the subnet validator predicts roadwork when p > 0.5


class LogitMap(BaseModel):
    """Calibrated logit = a * ln p - b * ln(1 - p) + c with p = sigmoid(z): beta calibration's form (Kull et al. 2017).

    What an exported graph needs to apply any calibrator of :mod:`stage1_core.evaluation.calibration`:
    ``sigmoid(a * logsigmoid(z) - b * logsigmoid(-z) + c)`` (ln p = logsigmoid(z), ln(1 - p) = logsigmoid(-z),
    both finite for every finite z, so no clipping is needed).
    """

    model_config = ConfigDict(frozen=True)

    a: float
    b: float
    c: float

    @classmethod
    def from_temperature(cls, temperature: float) -> LogitMap:
        """Temperature scaling z / T in this form: a = b = 1 / T, c = 0 (T = 1 leaves the logit unchanged)."""
        return cls(a=1.0 / temperature, b=1.0 / temperature, c=0.0)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The calibrated logit of each z, any shape."""
        z = finite_logits(logits)
        return self.c - self.a * np.logaddexp(0.0, -z) + self.b * np.logaddexp(0.0, z)  # a ln p - b ln(1 - p) + c


def finite_logits(logits: np.ndarray) -> np.ndarray:
    """Logits as float64, any shape, or a ValueError at the first NaN / infinity (the validator scores NaN as 0)."""
    z = np.asarray(logits, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(z))
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"logits: {len(bad)} values are NaN or infinite (first at index {first})")
    return z
