"""MLflow logging helpers: configs as params, histories and reports as metrics, pictures as artifacts.

They log into the active MLflow run (the one ZenML's MLflow experiment tracker opens for a step),
and do nothing outside a run, so the core stays usable without a tracker. ZenML's tracker puts every
step of one pipeline run into one MLflow run, so params, metrics, plots, the exported model and the
data lineage logged by different steps end up side by side.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from PIL import Image
from pydantic import BaseModel

from stage1_core.common.manifest import SPLITS

LINEAGE_COLUMNS = ("id", "source", "sha256", "label", "split")
SPLIT_MEMBERSHIP_ARTIFACT = (
    "lineage/split_manifest.csv"  # read back by the promotion gate (which images a champion saw)
)
DATASET_NAME = "split_manifest"  # the run's MLflow dataset input: every image with its label and split
DATASET_CONTEXT = "train_select_calibrate_test"  # one dataset, split four ways (its ``split`` column)


def _active() -> bool:
    return mlflow.active_run() is not None


def flatten(config: BaseModel | dict[str, Any], prefix: str) -> dict[str, str]:
    """Nested config fields as ``prefix.field.sub`` -> value strings (MLflow params are flat strings)."""
    flat: dict[str, str] = {}

    def walk(value: object, key: str) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        else:
            flat[key] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk(config, prefix)
    return flat


def log_config(config: BaseModel, prefix: str) -> None:
    """Log a config as MLflow params."""
    if _active():
        mlflow.log_params(flatten(config, prefix))


def log_run_parameters(config: BaseModel, others: dict[str, Any], exclude: set[str] | None = None) -> None:
    """Log a run's config (every setting in force, defaults included) and its other parameters as params.

    ``exclude`` drops config fields that steps never read. Keys a step already logged are skipped (MLflow
    refuses to overwrite a param with another value).
    """
    if not _active():
        return
    full = config.model_dump(mode="json", exclude=exclude) | others
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({key: value for key, value in flatten(full, "").items() if key not in logged})


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    """Log numbers under ``prefix``; None values are skipped (undefined metrics stay absent, not 0)."""
    if _active():
        mlflow.log_metrics(
            {f"{prefix}{name}": float(value) for name, value in metrics.items() if value is not None}, step=step
        )


def log_history(history: list[dict[str, float]], prefix: str) -> None:
    """Per-epoch rows (each with an ``epoch`` key) as stepped metrics, for loss curves in the MLflow UI."""
    for row in history:
        log_metrics({name: value for name, value in row.items() if name != "epoch"}, prefix, step=int(row["epoch"]))


def log_files(files: dict[str, str | bytes], artifact_dir: str) -> None:
    """Log report visualizations (HTML/PNG) as MLflow artifacts."""
    if not _active():
        return
    for name, content in files.items():
        if isinstance(content, bytes):
            mlflow.log_image(Image.open(io.BytesIO(content)), f"{artifact_dir}/{name}")
        else:
            mlflow.log_text(content, f"{artifact_dir}/{name}")


class DataLineage(BaseModel):
    """What a model was trained and evaluated on: a hash of the split manifest, rows per source, split sizes."""

    manifest_sha256: str
    n_rows: int
    rows_per_source: dict[str, int]
    split_sizes: dict[str, dict[str, int]]  # split -> label ("0"/"1") -> images

    def params(self) -> dict[str, str]:
        return {"lineage.manifest_sha256": self.manifest_sha256}

    def metrics(self) -> dict[str, float]:
        flat = {"lineage.rows": float(self.n_rows)} | {
            f"lineage.source.{source}.rows": float(n) for source, n in self.rows_per_source.items()
        }
        for split, labels in self.split_sizes.items():
            flat[f"lineage.split.{split}.rows"] = float(sum(labels.values()))
            flat |= {f"lineage.split.{split}.label_{label}": float(n) for label, n in labels.items()}
        return flat


def split_membership(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per image (id, source, sha256, label, split), sorted by id.

    This is the part of the manifest that defines the data.

    Raises:
        ValueError: naming the columns a split manifest must have.
    """
    missing = [column for column in LINEAGE_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(
            f"lineage needs a split manifest with columns {list(LINEAGE_COLUMNS)}; "
            f"missing {missing} (pass split_data's output)"
        )
    return manifest[list(LINEAGE_COLUMNS)].astype(str).sort_values("id", kind="stable").reset_index(drop=True)


def data_lineage(manifest: pd.DataFrame) -> DataLineage:
    """Lineage of a split manifest; the hash changes with any image, label or split assignment, not with row order."""
    membership = split_membership(manifest)
    digest = hashlib.sha256(membership.to_csv(index=False).encode()).hexdigest()
    sizes = membership.groupby(["split", "label"]).size()
    return DataLineage(
        manifest_sha256=digest,
        n_rows=len(membership),
        rows_per_source={str(source): int(n) for source, n in membership["source"].value_counts().sort_index().items()},
        split_sizes={
            split: {str(label): int(n) for label, n in sizes[split].items()}
            for split in SPLITS
            if split in sizes.index.get_level_values(0)
        },
    )


def log_lineage(manifest: pd.DataFrame, source: str | None = None) -> DataLineage:
    """Log the lineage as params and metrics, the split membership as a CSV artifact and as the run's dataset input.

    The dataset (``split_manifest``, digest: the first 16 hex digits of the manifest hash) is what MLflow's run
    page lists under "Datasets"; ``source`` is where the split manifest is stored (e.g. its ZenML artifact URI).
    Returns the lineage.
    """
    lineage = data_lineage(manifest)
    if _active():
        membership = split_membership(manifest)
        mlflow.log_params(lineage.params())
        log_metrics(lineage.metrics())
        mlflow.log_text(membership.to_csv(index=False), SPLIT_MEMBERSHIP_ARTIFACT)
        with warnings.catch_warnings():
            # MLflow registers its local artifact source twice and warns that a local path is ambiguous between them
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_pandas(
                membership, source=source, targets="label", name=DATASET_NAME, digest=lineage.manifest_sha256[:16]
            )
        mlflow.log_input(dataset, context=DATASET_CONTEXT)
    return lineage
