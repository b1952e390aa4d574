"""Base of the structured artifacts a person reads: data plus how to show it.

A report is a pydantic model (stored as JSON) that also knows its pictures and headline numbers,
so the ZenML dashboard, MLflow and a notebook all show the same thing.
"""

from __future__ import annotations

import html

from pydantic import BaseModel

from stage1_core.common.metrics import MetricValue


def format_number(value: float | None, digits: int = 4) -> str:
    """A figure for a table or the terminal; ``n/a`` when there is none."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def metric_cell(metric: MetricValue, digits: int = 4) -> str:
    """An HTML table cell: the value with its interval, or why the metric is undefined."""
    if metric.value is None:
        return f"<td>undefined: {html.escape(metric.undefined_reason or '')}</td>"
    value = format_number(metric.value, digits)
    ci_low = format_number(metric.ci_low, digits)
    ci_high = format_number(metric.ci_high, digits)
    return f"<td>{value} [{ci_low}, {ci_high}]</td>"


class Report(BaseModel):
    """A structured result with visualizations (file name -> HTML/Markdown text or PNG bytes)."""

    def visualizations(self) -> dict[str, str | bytes]:
        return {}

    def metadata(self) -> dict[str, float | int | str | bool]:
        return {}
