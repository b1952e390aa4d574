"""The promotion gate: register a model version in MLflow and decide whether it becomes champion.

A challenger becomes ``champion`` only when it clears the configured absolute bars and is not
worse than the current champion on the same val_test images; otherwise, if it clears the bars, it is
tagged ``challenger`` (a model that fails the bars gets no alias). "Not worse" is a paired test: both
models score the same images, and the paired bootstrap interval of the challenger's improvement over
the champion on ``comparison_metric`` must reach ``-max_mcc_drop`` (0 by default: the data must not
show the challenger worse). The improvement is metric(challenger) - metric(champion) for scores (MCC,
AUROC, ...) and metric(champion) - metric(challenger) for errors and losses (ECE, Brier, NLL, AURC,
AUGRC, ...), where lower is better.

The champion's predictions come from its registered ONNX model (the exact graph being served),
run on this run's val_test images. Images the champion was fitted or calibrated on (its
train / val_select / val_calib, read from its run's split-membership artifact, see
``tracking.log_lineage``) are left out, so a retrain whose new split moved old training images
into val_test cannot favour the champion. Every reason is kept, so the decision can be read.

A version that fails the bars gets no alias (it stays registered, its description and ``gate`` tag say why).

The registry change is all or nothing: the new version, its alias and the ZenML model stage
(through :class:`StageTransition`) are undone in reverse order when any of them fails.
"""

from __future__ import annotations

import html
import io
import logging
from typing import Protocol

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field, field_validator

from stage1_core.common.cli import UsageError
from stage1_core.common.config import StrictConfig
from stage1_core.common.logit_map import VALIDATOR_THRESHOLD
from stage1_core.common.metrics import METRIC_NAMES, compute_metrics, higher_is_better, paired_bootstrap_difference
from stage1_core.common.reports import Report
from stage1_core.data.images import load_uint8_images
from stage1_core.data.splits import bootstrap_groups
from stage1_core.registry.champion import (
    CHALLENGER,
    CHAMPION,
    FAILED_BARS,
    GATE_TAG,
    REGISTERED_MODEL_DESCRIPTION,
    REGISTERED_MODEL_NAME,
    load_registered_model,
)
from stage1_core.registry.tracking import SPLIT_MEMBERSHIP_ARTIFACT
from stage1_core.serving.predictor import ModelLoadError, Predictor, PredictorConfig

logger = logging.getLogger(__name__)


class PromotionConfig(StrictConfig):
    """Registry name, the absolute bars a model must clear, and the paired comparison with the champion."""

    registered_model_name: str = REGISTERED_MODEL_NAME
    min_mcc: float = 0.3
    max_ece: float = 0.15
    min_auroc: float = 0.7
    comparison_metric: str = Field(
        "mcc", description="metric of the paired comparison with the champion; its direction is known (ECE: lower)"
    )
    max_mcc_drop: float = Field(
        0.0,
        ge=0,
        description="tolerated worsening in comparison_metric's units (named after the default metric): not worse = "
        "upper CI bound of the challenger's improvement >= -max_mcc_drop",
    )
    n_bootstrap: int = Field(1000, ge=1, description="paired bootstrap resamples of the comparison")
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    min_compared_images: int = Field(
        20, ge=1, description="fewer shared unseen val_test images: no comparison, the champion stays"
    )

    @field_validator("comparison_metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        if name not in METRIC_NAMES:
            raise ValueError(f"comparison_metric {name!r} is not one of {list(METRIC_NAMES)}")
        return name


class RegistryUnavailableError(UsageError, RuntimeError):
    """The MLflow registry cannot be reached; nothing was changed."""


class PromotionError(RuntimeError):
    """A registry change failed midway; what was done has been undone."""


class StageTransition(Protocol):
    """The model stage outside MLflow (ZenML's model version stage) that must follow the alias."""

    def apply(self, promoted: bool) -> None:
        """Production (previous production archived) when promoted, else staging."""

    def undo(self) -> None:
        """Restore the stages ``apply`` changed; called only after ``apply`` was called."""


class ValTestEvidence(BaseModel):
    """The challenger's calibrated val_test probabilities, one per image, keyed by the image's sha256."""

    sha256: list[str]
    uris: list[str]
    labels: list[int]
    probabilities: list[float]
    groups: list[str] | None = (
        None  # split group per image: the paired bootstrap resamples whole groups (None: images one by one)
    )


def val_test_evidence(val_test: pd.DataFrame, labels: list[int], probabilities: list[float]) -> ValTestEvidence:
    """Key the evaluation's predictions by image; the labels must match the split row by row (same order).

    Raises:
        ValueError: the predictions do not belong to these rows (count or labels differ).
    """
    if (
        len(val_test) != len(labels)
        or len(labels) != len(probabilities)
        or val_test["label"].astype(int).tolist() != list(labels)
    ):
        raise ValueError(
            f"val_test has {len(val_test)} rows but the evaluation has {len(labels)} labels / "
            f"{len(probabilities)} probabilities "
            "(or other labels): pass the evaluation report of this run's split manifest"
        )
    return ValTestEvidence(
        sha256=val_test["sha256"].astype(str).tolist(),
        uris=val_test["uri"].astype(str).tolist(),
        labels=list(labels),
        probabilities=list(probabilities),
        groups=bootstrap_groups(val_test).tolist(),
    )


class ChampionComparison(BaseModel):
    """Paired comparison of the challenger with the champion on the val_test images the champion never saw."""

    champion_version: str
    metric: str
    n_val_test: int
    n_excluded_seen_by_champion: int
    n_compared: int
    challenger_value: float | None = None
    champion_value: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    not_worse: bool
    reason: str


class PromotionDecision(Report):
    """Outcome of the gate for one model version, with every reason."""

    registered_model_name: str
    version: str
    promoted: bool
    alias: str | None  # None: failed the bars, registered without an alias
    stage: str
    reasons: list[str]
    metrics: dict[str, float | None]
    bars_passed: bool
    champion_version: str | None
    comparison: ChampionComparison | None

    def visualizations(self) -> dict[str, str]:
        """A small HTML page for the dashboard: verdict, reasons, bars and the paired comparison."""
        verdict = (
            "PROMOTED to champion"
            if self.promoted
            else "kept as challenger"
            if self.alias
            else "failed the bars: registered without an alias"
        )
        colour = "#1a7f37" if self.promoted else "#9a6700" if self.alias else "#cf222e"
        rows = "".join(f"<li>{html.escape(reason)}</li>" for reason in self.reasons)
        metrics = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{_number(value)}</td></tr>" for name, value in self.metrics.items()
        )
        champion_note = (
            "champion before this run: v" + html.escape(self.champion_version)
            if self.champion_version
            else "no champion before this run"
        )
        page = (
            "<html><body style='font-family:sans-serif'>"
            f"<h2 style='color:{colour}'>{html.escape(self.registered_model_name)} v{html.escape(self.version)}: "
            f"{verdict}</h2>"
            f"<p>MLflow alias <b>{html.escape(self.alias or 'none')}</b>, "
            f"ZenML stage <b>{html.escape(self.stage)}</b>; "
            f"absolute bars {'passed' if self.bars_passed else 'not passed'}; "
            f"{champion_note}.</p>"
            f"<h3>Reasons</h3><ul>{rows}</ul>{self._comparison_table()}"
            "<h3>Metrics on val_test (calibrated, threshold 0.5)</h3>"
            f"<table border=1 cellpadding=4>{metrics}</table></body></html>"
        )
        return {"promotion_decision.html": page}

    def _comparison_table(self) -> str:
        if self.comparison is None:
            return ""
        c = self.comparison
        interval = f"[{_number(c.ci_low)}, {_number(c.ci_high)}]"
        return (
            f"<h3>Paired comparison with champion v{html.escape(c.champion_version)} ({html.escape(c.metric)})</h3>"
            "<table border=1 cellpadding=4>"
            f"<tr><td>val_test images</td><td>{c.n_val_test}</td></tr>"
            "<tr><td>left out: the champion was fitted or calibrated on them</td>"
            f"<td>{c.n_excluded_seen_by_champion}</td></tr>"
            f"<tr><td>compared</td><td>{c.n_compared}</td></tr>"
            f"<tr><td>challenger</td><td>{_number(c.challenger_value)}</td></tr>"
            f"<tr><td>champion</td><td>{_number(c.champion_value)}</td></tr>"
            "<tr><td>difference (challenger - champion), paired bootstrap CI</td>"
            f"<td>{_number(c.difference)} {interval}</td></tr>"
            f"<tr><td>not worse</td><td>{c.not_worse}: {html.escape(c.reason)}</td></tr></table>"
        )

    def metadata(self) -> dict[str, float | int | str | bool]:
        values: dict[str, float | int | str | bool] = {
            "promoted": self.promoted,
            "alias": self.alias or "none",
            "stage": self.stage,
            "version": self.version,
            "bars_passed": self.bars_passed,
        }
        if self.comparison is not None and self.comparison.difference is not None:
            values |= {
                "champion_version": self.comparison.champion_version,
                "difference_vs_champion": self.comparison.difference,
            }
        return values


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def check_registry(client: MlflowClient) -> None:
    """Fail fast, before any change, when the registry cannot be read.

    Raises:
        RegistryUnavailableError: one line naming the URI and what to check.
    """
    try:
        client.search_registered_models(max_results=1)
    except Exception as error:  # noqa: BLE001 - any transport or store error means the same: unreachable
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RegistryUnavailableError(
            f"cannot reach the MLflow registry at {client._registry_uri}: {message}; "
            "check the tracking URI and that the server is up"
        ) from None


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version behind the ``champion`` alias, or None when there is none yet (first run)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_seen_sha256(client: MlflowClient, run_id: str | None) -> set[str] | None:
    """sha256 of the images the champion was fitted or calibrated on; None if not logged.

    They are read from the split membership of the champion's run.
    """
    if not run_id:
        return None
    try:
        text = client.download_artifacts(run_id, SPLIT_MEMBERSHIP_ARTIFACT)
    except (MlflowException, OSError):
        return None
    with open(text) as handle:
        membership = pd.read_csv(io.StringIO(handle.read()), dtype=str)
    return set(membership.loc[membership["split"] != "val_test", "sha256"])


def score_champion(client: MlflowClient, name: str, uris: list[str]) -> np.ndarray:
    """P(roadwork) of the champion's registered ONNX model (fixed multi-view graph, as evaluated) on the given images.

    Its fp32 graph, whatever its int8 guard chose: the challenger's figures come from PyTorch in fp32, and the
    comparison is between the two models (what int8 may cost is the guard's budget, not the gate's).

    Raises:
        stage1_core.serving.predictor.ModelLoadError: the champion's files cannot be loaded.
    """
    exported, origin = load_registered_model(CHAMPION, tracking_uri=client._registry_uri, registered_model_name=name)
    predictor = Predictor(exported, PredictorConfig(mode="full", precision="fp32"), origin=origin)
    images = [image.numpy() for image in load_uint8_images(pd.DataFrame({"uri": uris}))]
    return np.array([prediction.p_roadwork for prediction in predictor.predict_arrays(images, uris)])


def compare_with_champion(
    champion_version: str,
    evidence: ValTestEvidence,
    champion_probabilities: np.ndarray | None,
    seen_by_champion: set[str] | None,
    config: PromotionConfig,
    failure: str | None = None,
) -> ChampionComparison:
    """Paired bootstrap of ``metric(challenger) - metric(champion)`` on val_test images the champion never fitted on.

    "Not worse" reads the interval in the metric's direction (:func:`~stage1_core.common.metrics.higher_is_better`).

    Args:
        champion_probabilities: the champion's P(roadwork) on ``evidence``'s images, in order; None when it
            could not be scored (``failure`` says why), which keeps the champion.
        seen_by_champion: sha256 of the champion's train/val_select/val_calib images; None when unknown
            (then all val_test images are compared and the reason says so).
    """
    n = len(evidence.sha256)
    base = {"champion_version": champion_version, "metric": config.comparison_metric, "n_val_test": n}
    if champion_probabilities is None:
        return ChampionComparison(
            **base,
            n_excluded_seen_by_champion=0,
            n_compared=0,
            not_worse=False,
            reason=f"the champion could not be scored: {failure}; it stays",
        )
    keep = (
        np.ones(n, dtype=bool)
        if seen_by_champion is None
        else ~np.isin(np.asarray(evidence.sha256), list(seen_by_champion))
    )
    base |= {"n_excluded_seen_by_champion": int(n - keep.sum()), "n_compared": int(keep.sum())}
    overlap_note = (
        "; the champion's split membership is not logged, so images it trained on may be included"
        if seen_by_champion is None
        else ""
    )
    if keep.sum() < config.min_compared_images:
        reason = (
            f"only {int(keep.sum())} val_test images unseen by the champion "
            f"(min_compared_images={config.min_compared_images}): no fair comparison, the champion stays"
        )
        return ChampionComparison(**base, not_worse=False, reason=reason + overlap_note)
    labels = np.asarray(evidence.labels)[keep]
    challenger, champion = np.asarray(evidence.probabilities)[keep], np.asarray(champion_probabilities)[keep]
    groups = None if evidence.groups is None else np.asarray(evidence.groups)[keep]
    settings = {
        "threshold": VALIDATOR_THRESHOLD,
        "n_bootstrap": config.n_bootstrap,
        "confidence": config.confidence,
        "seed": config.seed,
        "groups": groups,
    }
    try:
        difference, low, high = paired_bootstrap_difference(
            labels, challenger, champion, config.comparison_metric, **settings
        )  # type: ignore[arg-type]
    except ValueError as error:
        return ChampionComparison(
            **base, not_worse=False, reason=f"paired comparison impossible ({error}); the champion stays"
        )
    higher = higher_is_better(config.comparison_metric)
    best_improvement = high if higher else -low  # the upper CI bound of the improvement over the champion
    not_worse = best_improvement >= -config.max_mcc_drop
    word = "not worse than" if not_worse else "worse than"
    rule = (
        f"higher is better: not worse = upper bound >= {0.0 - config.max_mcc_drop:g}"
        if higher
        else f"lower is better: not worse = lower bound <= {config.max_mcc_drop:g}"
    )
    reason = (
        f"{config.comparison_metric} {word} champion v{champion_version}: difference {difference:+.4f}, "
        f"{config.confidence:.0%} paired bootstrap CI [{low:+.4f}, {high:+.4f}] "
        f"on {int(keep.sum())} images{_resampled(groups)} ({rule})"
    )
    return ChampionComparison(
        **base,
        challenger_value=_point(labels, challenger, config),
        champion_value=_point(labels, champion, config),
        difference=difference,
        ci_low=low,
        ci_high=high,
        not_worse=not_worse,
        reason=reason + overlap_note,
    )


def _resampled(groups: np.ndarray | None) -> str:
    return "" if groups is None else f" (resampled as {len(set(groups.tolist()))} split groups)"


def _point(labels: np.ndarray, probabilities: np.ndarray, config: PromotionConfig) -> float | None:
    return (
        compute_metrics(labels, probabilities, threshold=VALIDATOR_THRESHOLD, n_bootstrap=0)
        .metric(config.comparison_metric)
        .value
    )  # type: ignore[arg-type]


def decide(
    metrics: dict[str, float | None],
    comparison: ChampionComparison | None,
    config: PromotionConfig,
    blocking_issues: list[str],
) -> tuple[bool, bool, list[str]]:
    """Apply the bars and the comparison; returns (promote, bars_passed, reasons).

    Pure, so the rules are testable without a registry.

    ``comparison`` is None only when there is no champion yet (first run): the bars alone decide.
    """
    reasons: list[str] = list(blocking_issues)
    bars = [("mcc", config.min_mcc, "min"), ("auroc", config.min_auroc, "min"), ("ece", config.max_ece, "max")]
    for name, bar, kind in bars:
        value = metrics.get(name)
        if value is None:
            reasons.append(f"{name} is undefined on val_test: cannot clear the bar {bar}")
        elif (kind == "min" and value < bar) or (kind == "max" and value > bar):
            reasons.append(f"{name} {value:.4f} {'below' if kind == 'min' else 'above'} the bar {bar}")
    bars_passed = not reasons
    if bars_passed:
        reasons.append(
            f"clears the bars: mcc >= {config.min_mcc}, auroc >= {config.min_auroc}, ece <= {config.max_ece}, "
            "no leakage, no critical validation failure"
        )
    if comparison is None:
        reasons.append(
            "no champion yet (first run): a model that clears the bars becomes champion"
            if bars_passed
            else "no champion yet (first run), and this model does not clear the bars: no champion after this run"
        )
        return bars_passed, bars_passed, reasons
    reasons.append(comparison.reason)
    return bars_passed and comparison.not_worse, bars_passed, reasons


def register_and_promote(
    client: MlflowClient,
    model_uri: str,
    run_id: str,
    metrics: dict[str, float | None],
    config: PromotionConfig,
    blocking_issues: list[str],
    *,
    evidence: ValTestEvidence | None = None,
    stage: StageTransition | None = None,
    tags: dict[str, str] | None = None,
    description: str = "",
) -> PromotionDecision:
    """Register ``model_uri`` as a new version, decide, and set its alias and stage together.

    Aliases: ``champion`` (promoted; ZenML stage production), ``challenger`` (cleared the bars, not the
    comparison; staging), none (failed the bars; no stage). The version's description is ``description``
    followed by the verdict and its reasons; its ``gate`` tag is the alias or ``failed_bars``.

    Args:
        evidence: the challenger's val_test predictions; needed to compare with a champion (without
            it a champion, if any, stays, and the reason says so).
        stage: the ZenML model stage to move with the alias (None: MLflow only).
        tags: MLflow model version tags (e.g. lineage: manifest hash, ZenML run).
        description: what the model is (see ``model_record.version_description``).

    Raises:
        RegistryUnavailableError: the registry cannot be reached (nothing changed).
        PromotionError: a change failed midway; the registry and the stage were restored.
    """
    check_registry(client)
    name = config.registered_model_name
    champion = current_champion(client, name)
    comparison = None
    if champion is not None:
        comparison = _comparison(client, name, champion, evidence, config)
    promoted, bars_passed, reasons = decide(metrics, comparison, config, blocking_issues)
    alias = CHAMPION if promoted else CHALLENGER if bars_passed else None
    outcome = alias or FAILED_BARS
    verdict = f"Promotion gate: {outcome}. " + " ".join(f"{reason}." for reason in reasons)
    version = _transact(
        client,
        name,
        model_uri,
        run_id,
        alias,
        stage,
        (tags or {}) | {GATE_TAG: outcome},
        f"{description} {verdict}".strip(),
    )
    logger.info("%s v%s -> %s (%s)", name, version, outcome, "; ".join(reasons))
    return PromotionDecision(
        registered_model_name=name,
        version=version,
        promoted=promoted,
        alias=alias,
        stage=_stage_name(alias) if stage is not None else "not managed",
        reasons=reasons,
        metrics=metrics,
        bars_passed=bars_passed,
        champion_version=str(champion.version) if champion is not None else None,
        comparison=comparison,
    )


def _comparison(
    client: MlflowClient, name: str, champion: ModelVersion, evidence: ValTestEvidence | None, config: PromotionConfig
) -> ChampionComparison:
    version = str(champion.version)
    if evidence is None:
        empty = ValTestEvidence(sha256=[], uris=[], labels=[], probabilities=[])
        return compare_with_champion(
            version, empty, None, None, config, failure="no val_test predictions of the challenger were given"
        )
    try:
        probabilities = score_champion(client, name, evidence.uris)
    except (ModelLoadError, OSError) as error:
        return compare_with_champion(version, evidence, None, None, config, failure=str(error))
    return compare_with_champion(
        version, evidence, probabilities, champion_seen_sha256(client, champion.run_id), config
    )


def _stage_name(alias: str | None) -> str:
    return {CHAMPION: "production", CHALLENGER: "staging"}.get(alias or "", "none")


def _alias_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _transact(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    alias: str | None,
    stage: StageTransition | None,
    tags: dict[str, str],
    description: str,
) -> str:
    """Create the version, move the alias and the stage (none without an alias); undo the steps done on failure.

    Undone newest first.
    """
    undo: list[tuple[str, object]] = []
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
            undo.append(("registered model", lambda: client.delete_registered_model(name)))
        created = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, description=description)
        version = str(created.version)
        undo.append((f"version {version}", lambda: client.delete_model_version(name, version)))
        if alias is None:
            return version
        previous = _alias_holder(client, name, alias)
        client.set_registered_model_alias(name, alias, version)
        restore_alias = (
            (lambda: client.set_registered_model_alias(name, alias, previous))
            if previous
            else (lambda: client.delete_registered_model_alias(name, alias))
        )
        undo.append((f"alias {alias}", restore_alias))
        if stage is not None:
            undo.append(("model stage", stage.undo))
            stage.apply(alias == CHAMPION)
        return version
    except Exception as error:
        for what, step in reversed(undo):
            try:
                step()  # type: ignore[operator]
            except Exception as undo_error:  # noqa: BLE001 - report every undo that failed, keep undoing the rest
                logger.error("could not undo %s of %s: %s; fix the registry by hand", what, name, undo_error)
        undone = ", ".join(what for what, _ in reversed(undo)) or "nothing"
        raise PromotionError(
            f"promotion of {name} failed ({type(error).__name__}: {error}); undone: {undone}"
        ) from error
