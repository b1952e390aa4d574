"""Each compared column's distribution in the reference and the current batch, as counts and as one PNG.

Evidently's HTML report draws its figures with JavaScript, which the ZenML dashboard does not run (it shows HTML
visualizations in a sandboxed frame without scripts): there it is a blank page. The drift report therefore also
carries these counts (shared histogram bins for a numerical column, categories for a categorical one) and draws
them with matplotlib, so a static page shows the shift.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel

HISTOGRAM_BINS = 20
MAX_CATEGORIES = 12  # the rarest categories beyond these are counted together as OTHER
OTHER = "(other)"
PANELS_PER_ROW = 4


class ColumnDistribution(BaseModel):
    """Counts of one column in the reference and in the current batch, on shared bins or categories.

    ``edges`` are the numerical bins' edges (one more than the counts); empty for a categorical column, whose
    ``categories`` name the counts. Missing values (unreadable images) are counted apart.
    """

    column: str
    edges: list[float] = []
    categories: list[str] = []
    reference: list[int]
    current: list[int]
    reference_missing: int = 0
    current_missing: int = 0


def _numerical(column: str, reference: pd.Series, current: pd.Series) -> ColumnDistribution:
    values = [series.to_numpy(dtype=float) for series in (reference, current)]
    finite = [array[np.isfinite(array)] for array in values]
    pooled = np.concatenate(finite)
    edges = np.histogram_bin_edges(pooled, bins=HISTOGRAM_BINS) if pooled.size else np.array([0.0, 1.0])
    counts = [np.histogram(array, bins=edges)[0].tolist() for array in finite]
    return ColumnDistribution(
        column=column,
        edges=edges.tolist(),
        reference=counts[0],
        current=counts[1],
        reference_missing=int(values[0].size - finite[0].size),
        current_missing=int(values[1].size - finite[1].size),
    )


def _categorical(column: str, reference: pd.Series, current: pd.Series) -> ColumnDistribution:
    pooled = pd.concat([reference, current]).dropna().astype(str).value_counts()
    kept = pooled.index[:MAX_CATEGORIES].tolist()

    def counts(series: pd.Series) -> list[int]:
        present = series.dropna().astype(str)
        frequencies = present.value_counts()
        tail = [int(present[~present.isin(kept)].size)] if len(pooled) > len(kept) else []
        return [int(frequencies.get(category, 0)) for category in kept] + tail

    return ColumnDistribution(
        column=column,
        categories=kept + ([OTHER] if len(pooled) > len(kept) else []),
        reference=counts(reference),
        current=counts(current),
        reference_missing=int(reference.isna().sum()),
        current_missing=int(current.isna().sum()),
    )


def column_distributions(
    reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]
) -> list[ColumnDistribution]:
    """The distributions of the compared columns, in the order given (numerical, then categorical)."""
    return [_numerical(column, reference[column], current[column]) for column in numerical] + [
        _categorical(column, reference[column], current[column]) for column in categorical
    ]


def _shares(counts: list[int]) -> np.ndarray:
    total = sum(counts)
    return np.asarray(counts, dtype=float) / total if total else np.zeros(len(counts))


def distributions_png(distributions: list[ColumnDistribution], drifted: set[str]) -> bytes:
    """One panel per column, reference against current as shares of their rows; drifted columns' titles in red."""
    rows = max(1, math.ceil(len(distributions) / PANELS_PER_ROW))
    figure = Figure(figsize=(3.2 * PANELS_PER_ROW, 2.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, PANELS_PER_ROW, squeeze=False)).ravel()
    for panel, distribution in zip(axes, distributions):
        reference, current = _shares(distribution.reference), _shares(distribution.current)
        if distribution.edges:
            edges = np.asarray(distribution.edges)
            panel.stairs(reference, edges, fill=True, alpha=0.45, color="tab:blue", label="reference")
            panel.stairs(current, edges, linewidth=1.8, color="tab:orange", label="current")
        else:
            positions = np.arange(len(distribution.categories))
            panel.bar(positions - 0.2, reference, width=0.4, color="tab:blue", alpha=0.6, label="reference")
            panel.bar(positions + 0.2, current, width=0.4, color="tab:orange", label="current")
            panel.set_xticks(positions, labels=distribution.categories, rotation=30, fontsize=7)
        is_drifted = distribution.column in drifted
        panel.set_title(
            f"{distribution.column}{' (drifted)' if is_drifted else ''}",
            color="tab:red" if is_drifted else "black",
            fontsize=10,
        )
        panel.tick_params(labelsize=7)
    for panel in axes[len(distributions) :]:
        panel.set_visible(False)
    if distributions:
        axes[0].legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
