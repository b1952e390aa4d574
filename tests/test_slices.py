"""Slices of the demo data by metadata and object size, and the validator's image views (deterministic per seed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from stage1_core.common.metrics import compute_metrics
from stage1_core.data.images import load_rgb
from stage1_core.demo.config import SIZE_CLASSES
from stage1_core.evaluation.slices import (
    MISSING,
    VALIDATOR_VIEWS,
    RobustnessConfig,
    object_size_classes,
    robustness_logits,
    slice_table,
    validator_view,
)
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier


def test_object_size_joins_the_demo_truth_by_id(demo_manifest: pd.DataFrame, demo_dataset) -> None:
    sizes = object_size_classes(demo_manifest, demo_dataset / "demo_truth.parquet")
    assert len(sizes) == len(demo_manifest)
    assert set(sizes[demo_manifest["label"] == 0]) == {"none"}
    assert set(sizes[demo_manifest["label"] == 1]) <= set(SIZE_CLASSES)
    with pytest.raises(FileNotFoundError, match="truth_path"):
        object_size_classes(demo_manifest, demo_dataset / "absent.parquet")


def test_slice_table_scores_every_value_of_every_column(demo_manifest: pd.DataFrame, demo_dataset) -> None:
    rng = np.random.default_rng(0)
    labels = demo_manifest["label"].to_numpy()
    probs = np.clip(labels * 0.6 + rng.random(labels.size) * 0.4, 0.0, 1.0)
    groups = demo_manifest[["daytime", "source"]].assign(
        object_size=object_size_classes(demo_manifest, demo_dataset / "demo_truth.parquet")
    )
    groups.loc[0, "daytime"] = ""
    rows = slice_table(groups, labels, probs, n_bootstrap=20)
    for column in groups.columns:
        members = [row for row in rows if row.group == column]
        assert sum(row.metrics.n for row in members) == len(labels)
        assert {row.value for row in members} == set(groups[column].replace("", MISSING))
    night = next(row for row in rows if row.group == "daytime" and row.value == "night")
    mask = (groups["daytime"] == "night").to_numpy()
    assert night.metrics.mcc.value == compute_metrics(labels[mask], probs[mask], n_bootstrap=0).mcc.value
    one_class = next(row for row in rows if row.group == "object_size" and row.value == "none")
    assert one_class.metrics.mcc.value is None and one_class.metrics.mcc.undefined_reason
    assert "slice_object_size_none_n" in one_class.flat_metrics()
    with pytest.raises(ValueError, match="one row per prediction"):
        slice_table(groups.iloc[:3], labels, probs)


def test_validator_views_have_the_validator_shape_and_are_deterministic() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8))
    for view in VALIDATOR_VIEWS:
        out = validator_view(image, view, np.random.default_rng([7, 1]))
        assert out.shape == (3, 224, 224) and out.min() >= 0.0 and out.max() <= 1.0
        assert torch.equal(out, validator_view(image, view, np.random.default_rng([7, 1])))
    assert not torch.equal(
        validator_view(image, "L3", np.random.default_rng(1)), validator_view(image, "L3", np.random.default_rng(2))
    )
    pixels = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    expected_l0 = TF.resize(TF.center_crop(pixels, [120, 120]), [224, 224], antialias=True).clamp(0, 1)
    assert torch.allclose(validator_view(image, "L0", np.random.default_rng(0)), expected_l0)
    letterbox = validator_view(image, "letterbox", np.random.default_rng(0))
    assert letterbox[:, :30].abs().max() == 0.0 and letterbox[:, -30:].abs().max() == 0.0  # black bars above and below


def test_robustness_logits_score_every_view_of_real_images(demo_manifest: pd.DataFrame) -> None:
    torch.manual_seed(0)
    model = RoadworkClassifier(
        load_backbone("dinov2-demo"), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()
    rows = demo_manifest.head(3)
    config = RobustnessConfig(views=("L0", "L2", "letterbox"), seed=3)
    logits = robustness_logits(model, rows, config)
    assert set(logits) == {"L0", "L2", "letterbox"}
    assert all(values.shape == (3,) and np.isfinite(values).all() for values in logits.values())
    np.testing.assert_array_equal(robustness_logits(model, rows, config)["L2"], logits["L2"])
    assert load_rgb(rows["uri"].iloc[0]).size != (224, 224)  # the views really resize the stored image
