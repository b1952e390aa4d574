"""Fusion weights: source mix within each label, class balance, hard-negative oversampling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import WeightedRandomSampler

from stage1_core.data.fusion import FusionConfig, hard_negatives, sampling_weights, summarize


def _manifest(counts: dict[tuple[str, int], int], hard_per_source: int = 0) -> pd.DataFrame:
    """Rows per (source, label); the first ``hard_per_source`` negatives of each source are tagged hard."""
    rows = []
    for (source, label), n in counts.items():
        for index in range(n):
            hard = label == 0 and index < hard_per_source
            rows.append(
                {
                    "id": f"{source}:{label}:{index}",
                    "source": source,
                    "label": label,
                    "extras": json.dumps({"hard_negative": hard}),
                }
            )
    return pd.DataFrame(rows)


def test_defaults_balance_classes_and_follow_source_size_within_a_class() -> None:
    manifest = _manifest({("natix", 1): 800, ("natix", 0): 200, ("mapillary", 1): 50, ("mapillary", 0): 450})
    weights = sampling_weights(manifest, FusionConfig(hard_negative_factor=1.0))
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    summary = summarize(manifest, weights)
    assert summary.label_share == pytest.approx({"0": 0.5, "1": 0.5})
    assert summary.source_share == pytest.approx({"mapillary": 0.5 * 500 / 1500 * 2, "natix": 0.5 * 1000 / 1500 * 2})


def test_source_mix_holds_and_class_balance_wins_where_a_source_lacks_a_class() -> None:
    manifest = _manifest(
        {("natix", 1): 800, ("natix", 0): 200, ("mapillary", 1): 50, ("mapillary", 0): 450, ("roadwork", 1): 300}
    )
    two = manifest[manifest["source"] != "roadwork"]
    summary = summarize(two, sampling_weights(two, FusionConfig(source_mix={"natix": 0.3, "mapillary": 0.7})))
    assert summary.source_share == pytest.approx({"natix": 0.3, "mapillary": 0.7})
    assert summary.label_share == pytest.approx({"0": 0.5, "1": 0.5})
    mix = {"natix": 1.0, "mapillary": 1.0, "roadwork": 1.0}
    summary = summarize(manifest, sampling_weights(manifest, FusionConfig(source_mix=mix)))
    assert summary.label_share == pytest.approx({"0": 0.5, "1": 0.5})
    assert summary.source_share["roadwork"] == pytest.approx(0.5 / 3)  # a third of the positives, no negatives
    unbalanced = summarize(manifest, sampling_weights(manifest, FusionConfig(source_mix=mix, class_balance=False)))
    assert unbalanced.source_share == pytest.approx({"natix": 1 / 3, "mapillary": 1 / 3, "roadwork": 1 / 3})
    assert unbalanced.label_share["1"] == pytest.approx((0.8 + 0.1 + 1.0) / 3)


def test_hard_negatives_are_oversampled_by_the_factor_within_their_cell() -> None:
    manifest = _manifest({("natix", 1): 60, ("natix", 0): 40}, hard_per_source=10)
    hard = hard_negatives(manifest)
    assert hard.sum() == 10
    weights = sampling_weights(manifest, FusionConfig(hard_negative_factor=3.0))
    negatives = manifest["label"] == 0
    assert weights[hard].iloc[0] == pytest.approx(3 * weights[negatives & ~hard].iloc[0])
    assert weights[negatives].sum() == pytest.approx(0.5)
    summary = summarize(manifest, weights)
    assert summary.hard_negative_share == pytest.approx(0.5 * 30 / (30 + 30))
    drawn = list(
        WeightedRandomSampler(torch.as_tensor(weights.to_numpy()), 20_000, generator=torch.Generator().manual_seed(0))
    )
    share = np.isin(drawn, np.flatnonzero(hard.to_numpy())).mean()
    assert abs(share - summary.hard_negative_share) < 0.02, "a torch sampler draws what the summary says"


def test_mix_must_name_the_manifest_sources() -> None:
    manifest = _manifest({("natix", 1): 5, ("natix", 0): 5, ("mapillary", 0): 5})
    with pytest.raises(ValueError, match=r"unlisted \['mapillary'\], absent \['roadwork'\]"):
        sampling_weights(manifest, FusionConfig(source_mix={"natix": 0.5, "roadwork": 0.5}))
    left_out = sampling_weights(manifest, FusionConfig(source_mix={"natix": 1.0, "mapillary": 0.0}))
    assert left_out[manifest["source"] == "mapillary"].sum() == 0 and left_out.sum() == pytest.approx(1.0)
    with pytest.raises(ValidationError, match="source_mix shares"):
        FusionConfig(source_mix={"natix": -1.0})
