"""The ablation rows: each inference mode scored on val_test.

One backbone pass gives both the global and the multi-view logits.
"""

import typing

import numpy as np
import pandas as pd
import pytest
import torch

from stage1_core.common.metrics import compute_metrics
from stage1_core.data.splits import SPLIT_GROUP_COLUMN, bootstrap_groups, split_groups
from stage1_core.evaluation.ablation import AblationTable, recipe_name, score_inference_modes, slug
from stage1_core.evaluation.calibration import CalibrationConfig, fit_calibration_policy
from stage1_core.evaluation.report import EvaluationConfig
from stage1_core.modeling.adapters import AdapterConfig
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.inference import manifest_canvases, predict_global_and_full_logits, predict_logits
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.serving.adaptive import AdaptiveConfig


@pytest.fixture(scope="module")
def classifier() -> RoadworkClassifier:
    return RoadworkClassifier(
        load_backbone("dinov2-demo-random", seed=4), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()


def halves(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two labelled halves with both classes and their split groups (stand-ins for val_select and val_test)."""
    ordered = manifest.sort_values("label").reset_index(drop=True)
    ordered[SPLIT_GROUP_COLUMN] = split_groups(ordered, max_distance=None)
    return ordered.iloc[::2].reset_index(drop=True), ordered.iloc[1::2].reset_index(drop=True)


def test_one_pass_gives_the_global_view_and_the_aggregated_logits(classifier, demo_manifest) -> None:
    rows = demo_manifest.head(12)
    global_logits, full_logits = predict_global_and_full_logits(classifier, rows)
    np.testing.assert_allclose(full_logits, predict_logits(classifier, rows), atol=1e-5)
    dataset = manifest_canvases(classifier, rows)
    canvas = torch.stack([dataset[i][0] for i in range(len(rows))])
    global_only = classifier.config.multiview.model_copy(update={"aggregation": "global_only"})
    with torch.inference_mode():
        expected_global = classifier(canvas, global_only).numpy()
    np.testing.assert_allclose(global_logits, expected_global, atol=1e-5)
    assert not np.allclose(global_logits, full_logits), "the tiles change the aggregated logit"


def test_each_mode_is_scored_on_val_test_with_its_views(classifier, demo_manifest) -> None:
    val_select, val_test = halves(demo_manifest)
    policy = fit_calibration_policy(
        predict_logits(classifier, val_select), val_select["label"].to_numpy(), CalibrationConfig()
    )
    evaluation = EvaluationConfig(n_bootstrap=50)
    rows = score_inference_modes(
        "main: ExPLoRA + linear head", classifier, policy, val_select, val_test, evaluation, AdaptiveConfig()
    )
    assert [row.inference for row in rows] == ["global view", "multi-view", "adaptive"]
    global_logits, full_logits = predict_global_and_full_logits(classifier, val_test)
    labels = val_test["label"].to_numpy()
    for row, logits in zip(rows[:2], (global_logits, full_logits), strict=True):
        expected = compute_metrics(
            labels, policy.probabilities(logits), n_bootstrap=50, groups=bootstrap_groups(val_test)
        )
        assert (
            expected.n_groups == val_test[SPLIT_GROUP_COLUMN].nunique() < len(val_test)
        )  # frames of a sequence resampled together
        assert row.metrics["mcc"] == expected.mcc and row.metrics["auroc"] == expected.auroc
    assert rows[0].views_per_image == 1.0 and rows[1].views_per_image == 10.0
    assert 1.0 <= rows[2].views_per_image <= 10.0
    table = AblationTable(n_images=len(val_test)).with_rows(rows)
    assert "main: ExPLoRA + linear head" in table.html() and table.html().count("<tr>") == 4
    flat = table.flat_metrics()
    assert flat["ablation_main_explora_linear_head_global_view_views_per_image"] == 1.0
    assert flat["ablation_main_explora_linear_head_multi_view_auroc"] == rows[1].metrics["auroc"].value


def test_recipe_names_read_as_the_table_and_step_ids_use_them() -> None:
    assert recipe_name(True, "none") == "ExPLoRA + linear head"
    assert recipe_name(False, "doran") == "no ExPLoRA + DoRAN adapter"
    # every adapter a config may name (gpu.yaml's LoRA stage was a KeyError before the run started)
    for method in typing.get_args(AdapterConfig.model_fields["method"].annotation):
        assert recipe_name(True, method).startswith("ExPLoRA + ")
    assert slug("no ExPLoRA + DoRAN adapter") == "no_explora_doran_adapter"
