"""Data drift between a reference set and a new batch of images, with Evidently 0.7.

The model cannot be asked whether its inputs changed, so we compare cheap per-image appearance
features (brightness, contrast, colour, the orange of cones and barriers, edges, size) and the
scene tags (daytime, weather) between the training reference and each new batch. Evidently
picks the statistical test per column (by type and sample size) and decides per column whether
it drifted; we turn its result into a typed report and a retrain recommendation.

Appearance statistics miss shifts the model sees (a new city style at the same brightness), so
the classifier's own backbone features are compared too: the cls embedding of each image's
global view, projected on the first principal components fitted on the reference (PCA keeps
the directions the reference varies most along; each becomes a numeric column ``emb_i`` that
Evidently tests like any other, in the spirit of Rabanser et al. 2019, "Failing Loudly", who
found dimensionality reduction followed by univariate two-sample tests a strong shift detector).
ZenML's Evidently integration wraps Evidently's legacy API and is not used.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from typing import Literal

import numpy as np
import pandas as pd
import torch
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.tests.base_test import TestStatus
from evidently.presets import DataDriftPreset
from PIL import Image
from pydantic import BaseModel, Field
from sklearn.decomposition import PCA
from tqdm import tqdm

from stage1_core.common import reports
from stage1_core.common.config import StrictConfig
from stage1_core.data.images import canvas_transform, load_rgb
from stage1_core.modeling.model import RoadworkClassifier, make_views
from stage1_core.monitoring.distributions import ColumnDistribution, column_distributions, distributions_png

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
EMBEDDING_PREFIX = "emb_"
# Evidently 0.7 names of the metrics behind DataDriftPreset's tests (pinned: evidently<0.8).
VALUE_DRIFT_METRIC = "evidently:metric_v2:ValueDrift"
DRIFTED_COLUMNS_METRIC = "evidently:metric_v2:DriftedColumnsCount"
SUMMARY_FILE = "drift_summary.html"  # static: readable without JavaScript
EVIDENTLY_FILE = "drift.html"  # Evidently's interactive report


class ImageFeatureConfig(StrictConfig):
    """How appearance features are measured; images are shrunk first since only global statistics are needed."""

    max_side: int = Field(256, ge=16, description="longest side, in pixels, an image is shrunk to before measuring")
    orange_hue_degrees: tuple[float, float] = Field((15.0, 45.0), description="hue band of traffic-cone orange")
    orange_min_saturation: float = Field(0.5, ge=0, le=1, description="pale or grey pixels are not orange")
    orange_min_value: float = Field(0.4, ge=0, le=1, description="dark brown pixels are not orange")
    edge_threshold: float = Field(
        0.1, gt=0, description="luma gradient (per pixel, luma in [0, 1]) that counts as an edge"
    )


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
        raise ValueError(
            f"image_features needs manifest columns {missing}; pass a manifest from stage1_core.common.manifest"
        )
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


class DriftConfig(StrictConfig):
    """Which columns to compare, how Evidently tests them, and when drift means retraining.

    Evidently's default categorical test ("chisquare", also used for numeric columns with few
    distinct values such as width) is a goodness-of-fit test that takes the reference frequencies
    as exact: its false-alarm rate grows with current/reference size (about 22% per column at
    p < 0.05 for equal sizes, about 9% at 1:4). Keep the reference several times larger than a
    batch, or set ``cat_method="TVD"`` (a two-sample permutation test). The tests also assume
    independent images: frames of one sequence are near-copies, so a batch of a few long
    sequences looks drifted by chance (demo batches for drift checks use one frame per sequence).
    """

    columns: list[str] | None = Field(
        None, description="columns to compare; None: every numeric reference column plus the categorical ones present"
    )
    categorical_columns: list[str] = Field(default_factory=lambda: list(SCENE_TAGS), description="used when present")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Evidently: the dataset drifted when this share of columns did"
    )
    num_method: str | None = Field(
        None,
        description="Evidently stattest for numeric columns (e.g. 'ks', 'wasserstein'); None: chosen by sample size",
    )
    cat_method: str | None = Field(
        None,
        description="Evidently stattest for categorical columns (e.g. 'chisquare', 'TVD'); None: chosen by Evidently",
    )
    threshold: float | None = Field(
        None, description="stattest threshold for all columns; None: Evidently's default per test"
    )
    embedding_components: int = Field(
        4, ge=0, description="principal components of backbone embeddings compared as emb_0..; 0: off"
    )
    retrain_drift_share: float = Field(
        0.3, gt=0, le=1, description="recommend retraining from this share of drifted columns"
    )
    retrain_min_rows: int = Field(100, ge=1, description="no retraining advice from a batch smaller than this")


class EmbeddingProjection(BaseModel):
    """Principal axes of the reference's backbone embeddings: ``emb_i = (x - mean) . components[i]``."""

    mean: list[float]
    components: list[list[float]]  # n_components x embedding size
    explained_variance_ratio: list[float]

    @property
    def columns(self) -> list[str]:
        return [f"{EMBEDDING_PREFIX}{index}" for index in range(len(self.components))]

    def transform(self, embeddings: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """Project ``[N, d]`` embeddings (rows of NaN, from unreadable images, stay NaN).

        Raises:
            ValueError: the embedding size differs from the reference's (another backbone).
        """
        if self.components and embeddings.shape[1] != len(self.mean):
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dimensions, the reference projection {len(self.mean)}: "
                "embed the batch with the classifier of the run that built the reference"
            )
        values = (
            (embeddings - np.asarray(self.mean)) @ np.asarray(self.components).T
            if self.components
            else np.empty((len(embeddings), 0))
        )
        return pd.DataFrame(values, index=index, columns=self.columns)


@torch.inference_mode()
def backbone_embeddings(classifier: RoadworkClassifier, manifest: pd.DataFrame, batch_size: int = 16) -> np.ndarray:
    """Backbone cls features ``[N, d]`` of each image's global view (the view every image gets).

    Unreadable images get NaN rows.
    """
    classifier.eval()
    transform = canvas_transform(classifier.config.multiview.canvas_size, None)
    global_view = classifier.config.multiview.model_copy(update={"aggregation": "global_only"})
    features = np.full((len(manifest), classifier.backbone.config.hidden_size), np.nan, dtype=np.float32)
    uris = manifest["uri"].tolist()
    failures: list[str] = []
    for start in tqdm(range(0, len(uris), batch_size), desc="drift embeddings", unit="batch"):
        rows, canvases = [], []
        for row in range(start, min(start + batch_size, len(uris))):
            try:
                canvases.append(transform(load_rgb(uris[row])))
                rows.append(row)
            except (OSError, ValueError) as error:  # unreadable: keep the row as NaN, count it
                failures.append(f"{uris[row]}: {type(error).__name__}: {error}")
        if canvases:
            views = make_views(torch.stack(canvases), global_view)[:, 0]
            features[rows] = classifier.embed(views).float().numpy()
    if failures:
        logger.warning(
            "%d of %d images could not be embedded; their emb_ columns are NaN (first: %s)",
            len(failures),
            len(uris),
            "; ".join(failures[:3]),
        )
    return features


def fit_embedding_projection(embeddings: np.ndarray, n_components: int) -> EmbeddingProjection:
    """PCA (scikit-learn) of the reference embeddings, on the readable rows; at most ``rows - 1`` components."""
    finite = embeddings[np.isfinite(embeddings).all(axis=1)]
    k = min(n_components, len(finite) - 1, embeddings.shape[1])
    if k <= 0:
        return EmbeddingProjection(mean=[], components=[], explained_variance_ratio=[])
    pca = PCA(n_components=k, random_state=0).fit(finite)
    return EmbeddingProjection(
        mean=pca.mean_.tolist(),
        components=pca.components_.tolist(),
        explained_variance_ratio=pca.explained_variance_ratio_.tolist(),
    )


def drift_features(
    manifest: pd.DataFrame, classifier: RoadworkClassifier, projection: EmbeddingProjection
) -> pd.DataFrame:
    """Appearance features and scene tags (:func:`image_features`) plus the projected backbone embeddings."""
    features = image_features(manifest)
    if not projection.components:
        return features
    return features.join(projection.transform(backbone_embeddings(classifier, manifest), features.index))


def build_reference(
    manifest: pd.DataFrame, classifier: RoadworkClassifier, config: DriftConfig
) -> tuple[pd.DataFrame, EmbeddingProjection]:
    """Drift features of the training images, with the embedding projection fitted on them."""
    embeddings = (
        backbone_embeddings(classifier, manifest) if config.embedding_components else np.empty((len(manifest), 0))
    )
    projection = fit_embedding_projection(embeddings, config.embedding_components)
    features = image_features(manifest)
    if projection.components:
        features = features.join(projection.transform(embeddings, features.index))
    return features, projection


def batch_drift(
    batch: pd.DataFrame,
    reference: pd.DataFrame,
    projection: EmbeddingProjection,
    classifier: RoadworkClassifier,
    config: DriftConfig,
) -> DriftReport:
    """Drift of a new batch (manifest rows) against a reference built by :func:`build_reference`.

    Raises:
        ValueError: the batch lacks manifest columns, is empty, or the reference does not match the projection.
    """
    return drift_report(reference, drift_features(batch, classifier, projection), config)


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
    """Per-column drift, the dataset verdict, the retrain advice, the distributions, and Evidently's HTML report."""

    n_reference: int
    n_current: int
    columns: list[ColumnDrift]
    drifted_columns: list[str]
    drift_share: float
    dataset_drift: bool
    retrain_recommended: bool
    retrain_reason: str
    html: str
    distributions: list[ColumnDistribution] = []

    def visualizations(self) -> dict[str, str | bytes]:
        """The static summary first (readable where no JavaScript runs, as in the ZenML dashboard), then Evidently's."""
        return {SUMMARY_FILE: self.summary_html(), EVIDENTLY_FILE: self.html}

    def summary_html(self) -> str:
        """Verdict, per-column table (drifted first) and the distributions as an embedded PNG; no scripts."""
        verdict = (
            f"{len(self.drifted_columns)} of {len(self.columns)} columns drifted ({self.drift_share:.0%}); "
            f"dataset drift: {'yes' if self.dataset_drift else 'no'}; retraining "
            f"{'recommended' if self.retrain_recommended else 'not recommended'}: {self.retrain_reason}"
        )
        rows = "".join(
            f"<tr style='color:{'#cf222e' if column.drifted else 'inherit'}'><td>{html.escape(column.column)}</td>"
            f"<td>{column.kind}</td><td>{html.escape(column.method)}</td><td>{column.score:.4g}</td>"
            f"<td>{column.threshold:.4g}</td><td>{'drifted' if column.drifted else 'no'}</td></tr>"
            for column in sorted(self.columns, key=lambda column: not column.drifted)
        )
        figure = ""
        if self.distributions:
            png = base64.b64encode(distributions_png(self.distributions, set(self.drifted_columns))).decode()
            figure = (
                "<h3>Distributions: reference (blue) and current (orange), share of rows</h3>"
                "<img alt='distribution of each compared column' style='max-width:100%;height:auto' "
                f"src='data:image/png;base64,{png}'>"
            )
        return (
            "<html><head><title>Data drift</title></head><body style='font-family:sans-serif'>"
            f"<h2>Data drift: current batch ({self.n_current} rows) against the reference ({self.n_reference} rows)"
            f"</h2><p><b>{html.escape(verdict)}</b></p>"
            f"<p>Drifted: {html.escape(', '.join(self.drifted_columns) or 'none')}</p>"
            "<table border=1 cellpadding=4><tr><th>column</th><th>kind</th><th>test</th><th>score</th>"
            f"<th>threshold</th><th>verdict</th></tr>{rows}</table>{figure}"
            f"<p>Evidently's interactive report ({EVIDENTLY_FILE}, needs JavaScript) is the next visualization of "
            "this artifact and an artifact of the run in MLflow: open it in a browser.</p></body></html>"
        )

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
            raise ValueError(
                f"DriftConfig.columns {absent} are not in the reference (it has {list(reference.columns)})"
            )
        candidates = list(config.columns)
    else:
        candidates = list(reference.columns)
    categorical = [column for column in candidates if column in config.categorical_columns]
    numerical = [
        column
        for column in candidates
        if column not in categorical and pd.api.types.is_numeric_dtype(reference[column])
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
            raise ValueError(
                f"the {name} batch is empty: drift needs rows on both sides (check the step that built it)"
            )
    missing = [column for column in columns if column not in current.columns]
    if missing:
        raise ValueError(
            f"the current batch lacks reference columns {missing}: compute them the same way as for the reference "
            "(e.g. image_features, and the same embedding projection)"
        )


def _retrain_advice(share: float, n_current: int, config: DriftConfig) -> tuple[bool, str]:
    if n_current < config.retrain_min_rows:
        return (
            False,
            f"batch of {n_current} rows is below retrain_min_rows={config.retrain_min_rows}: collect more first",
        )
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
        typed = frame[columns].astype(
            {column: "float64" for column in numerical} | {column: "object" for column in categorical}
        )
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
        distributions=column_distributions(reference, current, numerical, categorical),
    )


def as_batch_source(batch: pd.DataFrame, name: str) -> pd.DataFrame:
    """An incoming batch's manifest as its own data source ``name``, ready to be fused with the training data.

    Ids and groups are prefixed with ``name`` (a batch drawn by the same adapter numbers its rows like
    the training data, and would otherwise collide as duplicate ids or merge unrelated sequences); the
    adapter's own source goes to ``extras.batch_of``. Being its own source, the batch is its own split
    stratum, so every split, val_test included, gets its share of the new data. Unlabeled rows are
    kept: validation quarantines them with their reason.

    Raises:
        ValueError: an empty name or one with ':'.
    """
    if not name or ":" in name:
        raise ValueError(f"batch source name {name!r} must be non-empty and without ':'")
    extras = [
        json.dumps(json.loads(text or "{}") | {"batch_of": source}, sort_keys=True)
        for text, source in zip(batch["extras"], batch["source"])
    ]
    return batch.assign(
        id=name + ":" + batch["id"].astype(str),
        group_id=name + ":" + batch["group_id"].astype(str),
        source=name,
        extras=extras,
    ).reset_index(drop=True)
