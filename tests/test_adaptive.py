import numpy as np
import pytest
import torch
from scipy.special import logit as scipy_logit
from sklearn.metrics import matthews_corrcoef

from stage1_core.common.logit_map import LogitMap
from stage1_core.common.metrics import bootstrap_group_weights
from stage1_core.export.exporter import CalibrationLayer, GlobalViewGraph, ServingGraph, TilesGraph
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.serving.adaptive import (
    AdaptiveConfig,
    AdaptivePolicy,
    evaluate_adaptive,
    fit_adaptive_policy,
    run_adaptive,
    signed_margin,
    skip_tiles,
)

CALIBRATION = LogitMap.from_temperature(1.3)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a noisy global-view P (rounded: tied margins) and a better multi-view P."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.6).astype(int)
    signal = np.where(labels == 1, 1.0, -1.0)
    p_global = np.round(1 / (1 + np.exp(-(signal * 0.8 + rng.normal(0, 1.2, n)))), 2)
    p_full = 1 / (1 + np.exp(-(signal * 1.5 + rng.normal(0, 1.0, n))))
    return labels, p_global, p_full


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_bounds_keep_the_budget_on_most_resamples_and_skip_the_most_images_the_rule_allows(seed: int) -> None:
    """Reference: sklearn's weighted MCC on every resample of whole sequences.

    It is computed for every pair of bounds the fit's rule walks through.
    """
    labels, p_global, p_full = _scores(120, seed)
    sequences = np.repeat(np.arange(40), 3)  # three frames per sequence
    config = AdaptiveConfig(max_mcc_drop=0.02, n_bootstrap=40, seed=3)
    policy = fit_adaptive_policy(p_global, p_full, labels, 10, config, sequences)

    weights = bootstrap_group_weights(sequences, config.n_bootstrap, config.seed)[:, sequences]
    margin = signed_margin(p_global, 0.5)
    assert np.unique(margin[margin > 0]).size <= config.max_candidates  # every "roadwork" bound is tried

    def skip_at(clear_bound: float, positive_bound: float) -> np.ndarray:
        return np.where(margin > 0, margin >= positive_bound, -margin >= clear_bound)

    def drop_at(clear_bound: float, positive_bound: float) -> float:
        adaptive = np.where(skip_at(clear_bound, positive_bound), p_global, p_full) > 0.5
        drops = [
            matthews_corrcoef(labels, p_full > 0.5, sample_weight=w)
            - matthews_corrcoef(labels, adaptive, sample_weight=w)
            for w in weights
        ]
        return float(np.quantile(drops, config.confidence))

    best = (0, np.inf, np.inf)
    for positive_bound in [np.inf, *np.unique(margin[margin > 0])[::-1]]:
        if drop_at(np.inf, positive_bound) > config.max_mcc_drop + 1e-12:
            break
        clear_bound = np.inf
        for bound in np.unique(-margin[margin <= 0])[::-1]:
            if drop_at(bound, positive_bound) > config.max_mcc_drop + 1e-12:
                break
            clear_bound = bound
        skipped = int(skip_at(clear_bound, positive_bound).sum())
        if skipped > best[0]:
            best = (skipped, positive_bound, clear_bound)
    assert (policy.positive_margin_threshold, policy.margin_threshold) == (
        pytest.approx(best[1]),
        pytest.approx(best[2]),
    )
    assert policy.confidence == config.confidence == 0.75
    outcome = policy.fitted_on
    assert outcome.mcc_full == pytest.approx(matthews_corrcoef(labels, p_full > 0.5))
    assert outcome.mcc_global == pytest.approx(matthews_corrcoef(labels, p_global > 0.5))
    assert outcome.skip_rate == pytest.approx(best[0] / labels.size)
    assert outcome.views_per_image == pytest.approx(1 + 9 * (1 - outcome.skip_rate))
    assert 0 < outcome.skip_rate < 1


def test_the_side_whose_answers_the_tiles_never_change_is_skipped_whole() -> None:
    """Top-K pooling's case: a global "roadwork" stands with the tiles, a global "no roadwork" is often overturned."""
    labels, p_global, p_full = _scores(300, 6)
    p_full = np.where(p_global > 0.5, np.maximum(p_full, 0.51), p_full)
    policy = fit_adaptive_policy(p_global, p_full, labels, 10, AdaptiveConfig(max_mcc_drop=0.0))
    assert policy.positive_margin_threshold <= signed_margin(p_global, 0.5)[p_global > 0.5].min()
    skipped = skip_tiles(p_global, policy)
    assert skipped[p_global > 0.5].all() and not skipped[p_global <= 0.5].all()
    assert policy.fitted_on.mcc_drop <= 0.0


def test_a_policy_saved_before_the_two_sided_fit_applies_its_one_bound_to_both_sides_and_bounds_survive_json() -> None:
    saved = AdaptivePolicy.model_validate_json(
        '{"decision_threshold": 0.5, "margin_threshold": 1.0, "max_mcc_drop": 0.01, "full_views": 10}'
    )
    p_global = np.array([0.2, 0.3, 0.5, 0.7, 0.8])  # logits -1.39, -0.85, 0, 0.85, 1.39
    assert skip_tiles(p_global, saved).tolist() == [True, False, False, False, True]
    two_sided = saved.model_copy(update={"margin_threshold": np.inf, "positive_margin_threshold": 0.5})
    assert skip_tiles(p_global, two_sided).tolist() == [False, False, False, True, True]
    assert AdaptivePolicy.model_validate_json(two_sided.model_dump_json()) == two_sided


def test_a_higher_confidence_never_skips_more() -> None:
    labels, p_global, p_full = _scores(300, 4)
    skip = [
        fit_adaptive_policy(
            p_global, p_full, labels, 10, AdaptiveConfig(max_mcc_drop=0.02, confidence=q)
        ).fitted_on.skip_rate
        for q in (0.5, 0.75, 0.95)
    ]
    assert skip[0] >= skip[1] >= skip[2] and skip[0] > skip[2]


def test_zero_budget_on_a_useless_global_view_never_skips_and_one_class_labels_are_refused() -> None:
    labels, _, p_full = _scores(200, 5)
    p_global = np.where(labels == 1, 0.01, 0.99)  # confidently wrong everywhere
    policy = fit_adaptive_policy(p_global, p_full, labels, 10, AdaptiveConfig(max_mcc_drop=0.0))
    assert policy.margin_threshold == np.inf and policy.fitted_on.skip_rate == 0.0
    assert evaluate_adaptive(p_global, p_full, labels, policy).mcc_drop == 0.0
    with pytest.raises(ValueError, match="both classes"):
        fit_adaptive_policy(p_global, p_full, np.ones_like(labels), 10, AdaptiveConfig())


def test_adaptive_path_equals_the_full_result_for_uncertain_images_and_the_global_result_for_confident_ones() -> None:
    model = RoadworkClassifier(
        load_backbone("dinov2-demo", seed=1), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    ).eval()
    global_graph, tiles_graph = GlobalViewGraph(model, CALIBRATION), TilesGraph(model, CALIBRATION)
    batch = torch.randint(0, 256, (12, 3, 64, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = ServingGraph(model, CALIBRATION)(batch).numpy()
        global_features, p_global, canvas = global_graph(batch)
        np.testing.assert_allclose(tiles_graph(canvas, global_features).numpy(), full, atol=1e-6)
        labels = np.arange(12) % 2
        policy = fit_adaptive_policy(p_global.numpy(), full, labels, 10, AdaptiveConfig())
        policy.margin_threshold, policy.positive_margin_threshold = (
            float(np.median(np.abs(signed_margin(p_global.numpy(), 0.5)))),
            None,
        )  # one bound, both sides

        def global_pass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return tuple(output.numpy() for output in global_graph(torch.from_numpy(images)))

        def tiles_pass(canvas: np.ndarray, global_features: np.ndarray) -> np.ndarray:
            assert len(canvas) < len(batch)  # only the uncertain images reach the tiles
            return tiles_graph(torch.from_numpy(canvas), torch.from_numpy(global_features)).numpy()

        probabilities, views = run_adaptive(global_pass, tiles_pass, batch.numpy(), policy)
    confident = skip_tiles(p_global.numpy(), policy)
    assert 0 < confident.sum() < len(batch)
    np.testing.assert_allclose(probabilities[~confident], full[~confident], atol=1e-6)
    np.testing.assert_allclose(probabilities[confident], p_global.numpy()[confident], atol=1e-6)
    assert (views == np.where(confident, 1, 10)).all()
    assert not np.allclose(full[confident], p_global.numpy()[confident], atol=1e-5)  # the two paths really differ


def test_signed_margin_is_the_difference_of_logits_and_stays_finite_at_zero_and_one() -> None:
    p = np.array([0.0, 1e-9, 0.2, 0.3, 0.5, 0.9, 1.0])
    margin = signed_margin(p, 0.3)
    np.testing.assert_allclose(
        margin[1:-1], scipy_logit(np.clip(p[1:-1], 1e-7, 1 - 1e-7)) - scipy_logit(0.3), rtol=1e-12
    )
    assert np.isfinite(margin).all() and margin[3] == 0.0
    assert margin[0] == pytest.approx(margin[1]) and margin[-1] > margin[-2]


@pytest.mark.parametrize("aggregation", ["mean", "attention"])
def test_tiles_graph_reproduces_the_fixed_graph_for_every_aggregation(aggregation: str) -> None:
    model = RoadworkClassifier(
        load_backbone("dinov2-demo", seed=3),
        ClassifierConfig(multiview=MultiViewConfig(view_size=28, aggregation=aggregation)),
    ).eval()
    batch = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        global_features, p_global, canvas = GlobalViewGraph(model, CALIBRATION)(batch)
        np.testing.assert_allclose(
            TilesGraph(model, CALIBRATION)(canvas, global_features).numpy(),
            ServingGraph(model, CALIBRATION)(batch).numpy(),
            atol=1e-6,
        )
        single = model.config.multiview.model_copy(update={"aggregation": "global_only"})
        np.testing.assert_allclose(
            p_global.numpy(), CalibrationLayer(CALIBRATION)(model(canvas, single)).numpy(), atol=1e-6
        )
