"""Base of the structured artifacts a person reads: data plus how to show it.

A report is a pydantic model (stored as JSON) that also knows its pictures and headline numbers,
so the ZenML dashboard, MLflow and a notebook all show the same thing.
"""

from __future__ import annotations

from pydantic import BaseModel


class Report(BaseModel):
    """A structured result with visualizations (file name -> HTML/Markdown text or PNG bytes)."""

    def visualizations(self) -> dict[str, str | bytes]:
        return {}

    def metadata(self) -> dict[str, float | int | str | bool]:
        return {}
