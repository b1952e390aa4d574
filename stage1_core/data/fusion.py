"""Fusion and balance: how often training draws each row when several sources are mixed.

Sources differ in size and label balance (NATIX is about 80% roadwork, ROADWork is 100%), so
concatenating them lets the largest source and the majority class dominate. Instead of
subsetting the data, each row gets a sampling weight (for ``torch.utils.data.WeightedRandomSampler``):

- class balance: each label gets the same share of draws (the validator's challenges are 50/50);
- source mix: within each label, the sources get the configured ratio (e.g. 50/50 NATIX/Mapillary);
  where a source lacks a label (ROADWork has no negatives) class balance wins and the other sources
  of that label share its draws;
- hard-negative oversampling: within its (label, source) cell a hard negative (orange look-alikes,
  potholes; ``extras.hard_negative``) is drawn ``hard_negative_factor`` times as often as another
  negative, the idea of hard-example mining (Shrivastava et al., 2016, OHEM) applied at sampling time.
"""

from __future__ import annotations

import json

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from stage1_core.common.config import StrictConfig


class FusionConfig(StrictConfig):
    """Sampling policy over a fused manifest; the defaults balance classes and double hard negatives."""

    source_mix: dict[str, float] | None = Field(
        None,
        description=(
            "relative share of draws per source, e.g. {natix: 0.3, mapillary: 0.7}; None: in proportion to rows"
        ),
    )
    class_balance: bool = Field(True, description="every label gets the same share of draws")
    hard_negative_factor: float = Field(
        2.0, ge=1.0, description="draws of a hard negative relative to another negative"
    )

    @field_validator("source_mix")
    @classmethod
    def _positive_mix(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is not None and (any(value < 0 for value in mix.values()) or sum(mix.values()) <= 0):
            raise ValueError(f"source_mix shares must be >= 0 with a positive sum, got {mix}")
        return mix


class FusionSummary(BaseModel):
    """Expected share of draws per source, label and hard negatives under the weights."""

    rows: int
    source_share: dict[str, float]
    label_share: dict[str, float]
    hard_negative_rows: int
    hard_negative_share: float = Field(description="share of draws that are hard negatives")


def hard_negatives(manifest: pd.DataFrame) -> pd.Series:
    """Per row, whether the adapter tagged it a hard negative (``extras.hard_negative``)."""
    flags = [bool(json.loads(extras or "{}").get("hard_negative", False)) for extras in manifest["extras"]]
    return pd.Series(flags, index=manifest.index, name="hard_negative", dtype=bool)


def _source_shares(manifest: pd.DataFrame, config: FusionConfig) -> pd.Series:
    counts = manifest["source"].value_counts()
    if config.source_mix is None:
        return counts / counts.sum()
    unlisted = sorted(set(counts.index) - set(config.source_mix))
    absent = sorted(source for source, share in config.source_mix.items() if share > 0 and source not in counts.index)
    if unlisted or absent:
        raise ValueError(
            f"FusionConfig.source_mix {config.source_mix} does not match the manifest's sources "
            f"{sorted(counts.index)}: "
            f"unlisted {unlisted}, absent {absent}; list every source (0 leaves one out) or set source_mix to null"
        )
    mix = pd.Series(config.source_mix, dtype=float).reindex(counts.index)
    return mix / mix.sum()


def sampling_weights(manifest: pd.DataFrame, config: FusionConfig) -> pd.Series:
    """Per-row draw probabilities (summing to 1, aligned with ``manifest.index``) for weighted sampling.

    Raises:
        ValueError: the manifest is empty, or ``source_mix`` does not name exactly its sources.
    """
    if manifest.empty:
        raise ValueError("cannot compute sampling weights of an empty manifest")
    source_share = _source_shares(manifest, config)
    hard = hard_negatives(manifest)
    row_weight = pd.Series(1.0, index=manifest.index).where(~hard, config.hard_negative_factor)
    labels = manifest["label"] if config.class_balance else pd.Series(0, index=manifest.index)
    weights = pd.Series(0.0, index=manifest.index)
    label_values = sorted(labels.unique())
    for label in label_values:
        in_label = labels == label
        present = source_share[source_share.index.isin(manifest.loc[in_label, "source"])]
        if present.sum() == 0:
            continue
        for source, share in (present / present.sum()).items():
            cell = in_label & (manifest["source"] == source)
            weights[cell] = row_weight[cell] / row_weight[cell].sum() * share / len(label_values)
    # A label held only by sources with a zero share gets no draws; the others are rescaled to sum to 1.
    return (weights / weights.sum()).rename("sampling_weight")


def summarize(manifest: pd.DataFrame, weights: pd.Series) -> FusionSummary:
    """What the weights do: the expected share of draws per source and label, and of hard negatives."""
    hard = hard_negatives(manifest)
    return FusionSummary(
        rows=len(manifest),
        source_share={str(key): float(value) for key, value in weights.groupby(manifest["source"]).sum().items()},
        label_share={str(key): float(value) for key, value in weights.groupby(manifest["label"]).sum().items()},
        hard_negative_rows=int(hard.sum()),
        hard_negative_share=float(weights[hard].sum()),
    )
