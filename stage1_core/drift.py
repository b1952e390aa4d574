"""Data drift between a reference set and a new batch of images, with Evidently 0.7.

The model cannot be asked whether its inputs changed, so we compare cheap per-image appearance
features (brightness, contrast, colour, the orange of cones and barriers, edges, size) and the
scene tags (daytime, weather) between the training reference and each new batch. Evidently
picks the statistical test per column (by type and sample size) and decides per column whether
it drifted; we turn its result into a typed report and a retrain recommendation. Any extra
numeric columns (for example ``emb_0..emb_k``, a low-dimensional projection of backbone
embeddings) are compared the same way. ZenML's Evidently integration wraps Evidently's legacy API
and is not used.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.tests.base_test import TestStatus
from evidently.presets import DataDriftPreset
from PIL import Image
from pydantic import BaseModel, Field
from tqdm import tqdm

from stage1_core import reports
from stage1_core.images import load_rgb

logger = logging.getLogger(__name__)

NUMERIC_FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "saturation",
    "orange_fraction",
    "edge_density",
    "width",
    "height",
    "aspect",
)
SCENE_TAGS: tuple[str, ...] = ("daytime", "weather")
# Evidently 0.7 names of the metrics behind DataDriftPreset's tests (pinned: evidently<0.8).
VALUE_DRIFT_METRIC = "evidently:metric_v2:ValueDrift"
DRIFTED_COLUMNS_METRIC = "evidently:metric_v2:DriftedColumnsCount"


class ImageFeatureConfig(BaseModel):
    """How appearance features are measured; images are shrunk first since only global statistics are needed."""

    max_side: int = Field(256, ge=16, description="longest side, in pixels, an image is shrunk to before measuring")
    orange_hue_degrees: tuple[float, float] = Field((15.0, 45.0), description="hue band of traffic-cone orange")
    orange_min_saturation: float = Field(0.5, ge=0, le=1, description="pale or grey pixels are not orange")
    orange_min_value: float = Field(0.4, ge=0, le=1, description="dark brown pixels are not orange")
    edge_threshold: float = Field(0.1, gt=0, description="luma gradient (per pixel, luma in [0, 1]) that counts as an edge")


def _appearance(image: Image.Image, config: ImageFeatureConfig) -> dict[str, float]:
    width, height = image.size
    image.thumbnail((config.max_side, config.max_side))
    luma = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    hue_degrees, saturation, value = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    low, high = config.orange_hue_degrees
    orange = (hue_degrees >= low) & (hue_degrees <= high) & (saturation >= config.orange_min_saturation)
    orange &= value >= config.orange_min_value
    gradient_rows, gradient_cols = np.gradient(luma)
    edges = np.hypot(gradient_rows, gradient_cols) > config.edge_threshold
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "orange_fraction": float(orange.mean()),
        "edge_density": float(edges.mean()),
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
    }


def image_features(manifest: pd.DataFrame, config: ImageFeatureConfig | None = None) -> pd.DataFrame:
    """Per-image drift features, indexed by manifest ``id``; images are streamed one at a time.

    Luma is ITU-R BT.601 (PIL's "L"); brightness and contrast are its mean and standard deviation,
    saturation the mean HSV saturation, orange_fraction the share of saturated, bright pixels in
    the orange hue band, edge_density the share of pixels whose luma gradient exceeds the threshold.
    An image that cannot be read keeps its row with NaN features and is counted in a warning.

    Raises:
        ValueError: naming the manifest columns this needs when they are missing.
    """
    config = config or ImageFeatureConfig()
    missing = [column for column in ("id", "uri", *SCENE_TAGS) if column not in manifest.columns]
    if missing:
        raise ValueError(f"image_features needs manifest columns {missing}; pass a manifest from stage1_core.manifest")
    rows: list[dict[str, float]] = []
    failures: list[str] = []
    for uri in tqdm(manifest["uri"], desc="drift features", unit="img"):
        try:
            rows.append(_appearance(load_rgb(uri), config))
        except (OSError, ValueError) as error:  # unreadable or undecodable file: keep the row, count it
            failures.append(f"{uri}: {type(error).__name__}: {error}")
            rows.append(dict.fromkeys(NUMERIC_FEATURES, math.nan))
    if failures:
        logger.warning(
            "%d of %d images could not be read; their features are NaN (first: %s)",
            len(failures),
            len(manifest),
            "; ".join(failures[:3]),
        )
    features = pd.DataFrame(rows, columns=list(NUMERIC_FEATURES), index=pd.Index(manifest["id"], name="id"))
    for column in SCENE_TAGS:
        features[column] = manifest[column].to_numpy()
    return features


class DriftConfig(BaseModel):
    """Which columns to compare, how Evidently tests them, and when drift means retraining.

    Evidently's default categorical test ("chisquare", also used for numeric columns with few
    distinct values such as width) is a goodness-of-fit test that takes the reference frequencies
    as exact: its false-alarm rate grows with current/reference size (about 22% per column at
    p < 0.05 for equal sizes, about 9% at 1:4). Keep the reference several times larger than a
    batch, or set ``cat_method="TVD"`` (a two-sample permutation test).
    """

    columns: list[str] | None = Field(
        None, description="columns to compare; None: every numeric reference column plus the categorical ones present"
    )
    categorical_columns: list[str] = Field(default_factory=lambda: list(SCENE_TAGS), description="used when present")
    drift_share: float = Field(0.5, gt=0, le=1, description="Evidently: the dataset drifted when this share of columns did")
    num_method: str | None = Field(
        None, description="Evidently stattest for numeric columns (e.g. 'ks', 'wasserstein'); None: chosen by sample size"
    )
    cat_method: str | None = Field(
        None, description="Evidently stattest for categorical columns (e.g. 'chisquare', 'TVD'); None: chosen by Evidently"
    )
    threshold: float | None = Field(None, description="stattest threshold for all columns; None: Evidently's default per test")
    retrain_drift_share: float = Field(0.3, gt=0, le=1, description="recommend retraining from this share of drifted columns")
    retrain_min_rows: int = Field(100, ge=1, description="no retraining advice from a batch smaller than this")


class ColumnDrift(BaseModel):
    """Evidently's verdict on one column.

    ``score`` is what the method returns: a p-value for tests (K-S, chi-square, Z, TVD: drift when
    below ``threshold``) or a distance (Wasserstein, Jensen-Shannon, PSI: drift at or above it).
    ``drifted`` is Evidently's own decision, so callers need not know which kind a method is.
    """

    column: str
    kind: Literal["numerical", "categorical"]
    method: str  # Evidently's display name for its default choice, else the configured method name
    score: float
    threshold: float
    drifted: bool


class DriftReport(reports.Report):
    """Per-column drift, the dataset verdict, the retrain advice, and Evidently's HTML report."""

    n_reference: int
    n_current: int
    columns: list[ColumnDrift]
    drifted_columns: list[str]
    drift_share: float
    dataset_drift: bool
    retrain_recommended: bool
    retrain_reason: str
    html: str

    def visualizations(self) -> dict[str, str]:
        return {"drift.html": self.html}

    def metadata(self) -> dict[str, float | int | str | bool]:
        return {
            "n_current": self.n_current,
            "drift_share": self.drift_share,
            "drifted_columns": ", ".join(self.drifted_columns),
            "dataset_drift": self.dataset_drift,
            "retrain_recommended": self.retrain_recommended,
        }


def _split_columns(reference: pd.DataFrame, config: DriftConfig) -> tuple[list[str], list[str]]:
    """(numerical, categorical) columns to compare, checked against the reference."""
    if config.columns is not None:
        absent = [column for column in config.columns if column not in reference.columns]
        if absent:
            raise ValueError(f"DriftConfig.columns {absent} are not in the reference (it has {list(reference.columns)})")
        candidates = list(config.columns)
    else:
        candidates = list(reference.columns)
    categorical = [column for column in candidates if column in config.categorical_columns]
    numerical = [
        column for column in candidates if column not in categorical and pd.api.types.is_numeric_dtype(reference[column])
    ]
    unusable = [column for column in candidates if column not in categorical and column not in numerical]
    if unusable:
        raise ValueError(
            f"reference columns {unusable} are neither numeric nor listed in DriftConfig.categorical_columns "
            f"{config.categorical_columns}: declare them categorical or choose columns with DriftConfig.columns"
        )
    if not numerical and not categorical:
        raise ValueError("no columns to compare: the reference has none, or DriftConfig.columns is empty")
    return numerical, categorical


def _check_batches(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> None:
    for name, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise ValueError(f"the {name} batch is empty: drift needs rows on both sides (check the step that built it)")
    missing = [column for column in columns if column not in current.columns]
    if missing:
        raise ValueError(
            f"the current batch lacks reference columns {missing}: compute them the same way as for the reference "
            "(e.g. image_features, and the same embedding projection)"
        )


def _retrain_advice(share: float, n_current: int, config: DriftConfig) -> tuple[bool, str]:
    if n_current < config.retrain_min_rows:
        return False, f"batch of {n_current} rows is below retrain_min_rows={config.retrain_min_rows}: collect more first"
    if share >= config.retrain_drift_share:
        return True, f"{share:.0%} of columns drifted (retrain from {config.retrain_drift_share:.0%})"
    return False, f"{share:.0%} of columns drifted, below the retrain bound {config.retrain_drift_share:.0%}"


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column with Evidently's DataDriftPreset.

    Raises:
        ValueError: when either batch is empty, the current batch lacks reference columns (named),
            or a reference column is neither numeric nor declared categorical.
    """
    numerical, categorical = _split_columns(reference, config)
    columns = numerical + categorical
    _check_batches(reference, current, columns)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame) -> Dataset:
        typed = frame[columns].astype({column: "float64" for column in numerical} | {column: "object" for column in categorical})
        return Dataset.from_pandas(typed.reset_index(drop=True), data_definition=definition)

    preset = DataDriftPreset(
        columns=columns,
        drift_share=config.drift_share,
        num_method=config.num_method,
        cat_method=config.cat_method,
        threshold=config.threshold,
    )
    snapshot = Report([preset], include_tests=True).run(dataset(current), dataset(reference))

    column_drift: list[ColumnDrift] = []
    share, dataset_drift = math.nan, False
    for test in snapshot.tests_results:
        params = test.metric_config.params
        if test.status == TestStatus.ERROR:
            raise RuntimeError(f"Evidently could not run '{test.name}': {test.description}")
        result = snapshot.metric_results[test.metric_config.metric_id]
        if params["type"] == VALUE_DRIFT_METRIC:
            column_drift.append(
                ColumnDrift(
                    column=params["column"],
                    kind="categorical" if params["column"] in categorical else "numerical",
                    method=str(params["method"]),
                    score=float(result.value),
                    threshold=float(params["threshold"]),
                    drifted=test.status == TestStatus.FAIL,
                )
            )
        elif params["type"] == DRIFTED_COLUMNS_METRIC:
            share = float(result.share.value)
            dataset_drift = test.status == TestStatus.FAIL
    if math.isnan(share) or len(column_drift) != len(columns):
        raise RuntimeError(
            f"Evidently returned {len(column_drift)} column verdicts for {len(columns)} columns and "
            f"{'no' if math.isnan(share) else 'a'} drift share: check the evidently version (this needs 0.7.x)"
        )
    retrain, reason = _retrain_advice(share, len(current), config)
    drifted = [drift.column for drift in column_drift if drift.drifted]
    logger.info(
        "drift: %d of %d columns drifted (%.0f%%) %s; dataset drift %s; retrain %s (%s)",
        len(drifted),
        len(columns),
        100 * share,
        drifted,
        dataset_drift,
        retrain,
        reason,
    )
    return DriftReport(
        n_reference=len(reference),
        n_current=len(current),
        columns=column_drift,
        drifted_columns=drifted,
        drift_share=share,
        dataset_drift=dataset_drift,
        retrain_recommended=retrain,
        retrain_reason=reason,
        html=snapshot.get_html_str(as_iframe=False),
    )
