"""MLflow logging helpers: configs as params, histories and reports as metrics, pictures as artifacts.

They log into the active MLflow run (the one ZenML's MLflow experiment tracker opens for a step),
and do nothing outside a run, so the core stays usable without a tracker.
"""

from __future__ import annotations

import io
import json

import mlflow
from PIL import Image
from pydantic import BaseModel


def _active() -> bool:
    return mlflow.active_run() is not None


def flatten(config: BaseModel, prefix: str) -> dict[str, str]:
    """Nested config fields as ``prefix.field.sub`` -> value strings (MLflow params are flat strings)."""
    flat: dict[str, str] = {}

    def walk(value: object, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}")
        else:
            flat[key] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk(config.model_dump(mode="json"), prefix)
    return flat


def log_config(config: BaseModel, prefix: str) -> None:
    """Log a config as MLflow params."""
    if _active():
        mlflow.log_params(flatten(config, prefix))


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    """Log numbers under ``prefix``; None values are skipped (undefined metrics stay absent, not 0)."""
    if _active():
        mlflow.log_metrics({f"{prefix}{name}": float(value) for name, value in metrics.items() if value is not None}, step=step)


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
