"""Score images with the exported model from the command line.

``python -m pipelines.predict IMAGE_OR_DIR... [--model champion|PATH] [--mode adaptive|full] [--json]``

Every input is reported: a score per image, or which input failed and why (empty, not an image,
corrupt, too small, too large). The rest are still scored; the exit code is 1 when any input
failed and 2 when the model cannot be loaded. Folders contribute their files with an image
extension (recursively); their other files are listed as skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel
from tqdm import tqdm

from stage1_core.common.cli import EXIT_FINDING, EXIT_OK, configure_logging, run_command
from stage1_core.registry.champion import CHAMPION, load_predictor, load_registered_model
from stage1_core.serving.predictor import BadImageError, Prediction, PredictorConfig, decode_image

IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())
CHUNK = 64  # decoded images held in memory at once


class Failure(BaseModel):
    source: str
    error: str


class PredictReport(BaseModel):
    """What ``--json`` prints."""

    model: str
    mode: str
    precision: str  # fp32 or int8: the graphs served (the bundle's int8 guard decides)
    predictions: list[Prediction]
    failures: list[Failure]
    skipped: list[str]
    views_per_image: float | None


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """(files to score, files skipped in folders for their extension). Named files are always scored."""
    files: list[Path] = []
    skipped: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            files.append(path)
            continue
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if child.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(child)
            else:
                skipped.append(str(child))
    return files, skipped


def _tracking_uri(explicit: str | None) -> str | None:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the active ZenML stack's MLflow tracker (when ZenML has one)."""
    if explicit or os.environ.get("MLFLOW_TRACKING_URI"):
        return explicit or os.environ["MLFLOW_TRACKING_URI"]
    try:
        from stacks.local import mlflow_tracking_uri  # imported only here: scoring a bundle folder never pays for ZenML

        return mlflow_tracking_uri() or None
    except Exception as error:  # noqa: BLE001 - any ZenML failure only means "no URI from ZenML"; the predictor then says what to pass
        logging.getLogger(__name__).info("no MLflow tracking URI from the active ZenML stack: %s", error)
        return None


def _decoded(
    files: list[Path], config: PredictorConfig, failures: list[Failure]
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Chunks of (source, uint8 image) for the readable inputs; failures are appended as they occur."""
    chunk: list[tuple[str, np.ndarray]] = []
    for path in tqdm(files, desc="predict", unit="img", disable=len(files) < CHUNK):
        try:
            chunk.append((str(path), _read(path, config)))
        except (BadImageError, OSError) as error:
            failures.append(Failure(source=str(path), error=str(error).removeprefix(f"{path}: ")))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read(path: Path, config: PredictorConfig) -> np.ndarray:
    if not path.exists():
        raise BadImageError(f"{path}: no such file or folder")
    return decode_image(path.read_bytes(), source=str(path), config=config)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status.

    0: all scored, 1: some input failed, 2: model or usage error, 3: internal error.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR")
    parser.add_argument(
        "--model",
        default=CHAMPION,
        help="an exported bundle folder (model.onnx + metadata.json) or an MLflow registry alias (default: champion)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else the active ZenML stack's)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument(
        "--mode",
        choices=["adaptive", "full"],
        default="adaptive",
        help=(
            "adaptive: global view first, tiles only for uncertain images (when the model has the adaptive graphs); "
            "full: all views for every image"
        ),
    )
    parser.add_argument(
        "--max-pixels", type=int, default=PredictorConfig().max_pixels, help="refuse larger images (pixels)"
    )
    parser.add_argument(
        "--min-side", type=int, default=PredictorConfig().min_side, help="refuse images with a smaller side (px)"
    )
    parser.add_argument(
        "--save-bundle",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the registered model's bundle folder here (what a miner serves) instead of scoring",
    )
    args = parser.parse_args(argv)
    if not args.inputs and args.save_bundle is None:
        parser.error("give images or folders to score, or --save-bundle DIR")
    configure_logging(logging.WARNING)
    is_path = Path(args.model).expanduser().exists()
    tracking_uri = None if is_path else _tracking_uri(args.tracking_uri)

    def run() -> int:
        if args.save_bundle is not None:
            exported, origin = load_registered_model(args.model, tracking_uri=tracking_uri)
            print(f"{origin} written to {exported.save(args.save_bundle)}")
            return EXIT_OK
        config = PredictorConfig(max_pixels=args.max_pixels, min_side=args.min_side, mode=args.mode)
        predictor = load_predictor(args.model, tracking_uri=tracking_uri, config=config)
        files, skipped = expand_inputs(args.inputs)
        failures: list[Failure] = []
        predictions: list[Prediction] = []
        for chunk in _decoded(files, config, failures):
            predictions += predictor.predict_arrays([image for _, image in chunk], [source for source, _ in chunk])
        views = sum(p.views for p in predictions) / len(predictions) if predictions else None
        report = PredictReport(
            model=predictor.origin,
            mode=predictor.mode,
            precision=predictor.precision,
            predictions=predictions,
            failures=failures,
            skipped=skipped,
            views_per_image=views,
        )
        if args.json:
            print(report.model_dump_json(indent=2))
        else:
            for prediction in predictions:
                print(
                    f"{prediction.source}\t{prediction.p_roadwork:.4f}\tviews={prediction.views}"
                    + (f"\twarning: {prediction.warning}" if prediction.warning else "")
                )
            for failure in failures:
                print(f"FAILED {failure.source}: {failure.error}", file=sys.stderr)
            for name in skipped:
                print(f"skipped {name}: not an image file extension", file=sys.stderr)
            summary = (
                f"{len(predictions)} scored, {len(failures)} failed, {len(skipped)} skipped; "
                f"model {predictor.origin} ({predictor.mode}, {predictor.precision})"
            )
            print(summary + (f", {views:.2f} views/image" if views is not None else ""), file=sys.stderr)
        return EXIT_FINDING if failures or not files else EXIT_OK

    return run_command("predict", run)


if __name__ == "__main__":
    sys.exit(main())
