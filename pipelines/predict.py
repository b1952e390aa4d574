"""Score images with the exported model from the command line.

``python -m pipelines.predict IMAGE_OR_DIR... [--model champion|PATH] [--mode adaptive|full] [--json]``

Every input is reported, as scored, failed or skipped with the reason, and the counts add up: a score per
image; a failure for an input that cannot be scored (missing, a broken link, unreadable, empty, not an image,
corrupt, too small, too large, or a folder holding no image file); a skip for a file a folder holds that is not
scored (no image extension, hidden, not a regular file, a link to a folder). The rest are still scored; the exit
code is 1 when any input failed and 2 when the model cannot be loaded. With ``--json`` stdout carries the JSON
report alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image
from pydantic import BaseModel
from tqdm import tqdm

from stage1_core.common.cli import EXIT_FINDING, EXIT_OK, configure_logging, run_printing_command, writable_folder
from stage1_core.common.config import config_from_options
from stage1_core.registry.champion import CHAMPION, load_predictor, load_registered_model, looks_like_a_path
from stage1_core.serving.predictor import BadImageError, Prediction, PredictorConfig, decode_image

IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())
CHUNK = 64  # decoded images held in memory at once


class Failure(BaseModel):
    source: str
    error: str


class Skipped(BaseModel):
    source: str
    reason: str


class PredictReport(BaseModel):
    """What ``--json`` prints; ``len(predictions) + len(failures) + len(skipped)`` is every input reported."""

    model: str
    mode: str
    precision: str  # fp32 or int8: the graphs served (the bundle's int8 guard decides)
    predictions: list[Prediction]
    failures: list[Failure]
    skipped: list[Skipped]
    views_per_image: float | None


class Inputs(BaseModel):
    """The named inputs resolved: files to score, inputs already failed, files skipped (each with its reason)."""

    files: list[Path] = []
    failures: list[Failure] = []
    skipped: list[Skipped] = []


def _broken_link(path: Path) -> str | None:
    """Why ``path`` is a dangling symbolic link (None when it is not one)."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link to {os.readlink(path)}"
    return None


def _scan_folder(folder: Path, inputs: Inputs) -> None:
    """Add what ``folder`` holds (recursively, links to folders not followed) to ``inputs``: every entry reported."""
    before = len(inputs.files) + len(inputs.failures)

    def unreadable(error: OSError) -> None:
        inputs.failures.append(Failure(source=str(error.filename), error=f"folder unreadable ({error.strerror})"))

    for root, folders, names in os.walk(folder, onerror=unreadable):
        base = Path(root)
        for name in sorted(folders):
            if (base / name).is_symlink():
                inputs.skipped.append(Skipped(source=str(base / name), reason="link to a folder (not followed)"))
            elif name.startswith("."):
                inputs.skipped.append(Skipped(source=str(base / name), reason="hidden folder (not read)"))
        folders[:] = sorted(name for name in folders if not name.startswith(".") and not (base / name).is_symlink())
        for name in sorted(names):
            path = base / name
            if (reason := _broken_link(path)) is not None:
                inputs.failures.append(Failure(source=str(path), error=reason))
            elif name.startswith("."):
                inputs.skipped.append(Skipped(source=str(path), reason="hidden file"))
            elif not path.is_file():
                inputs.skipped.append(Skipped(source=str(path), reason="not a regular file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                inputs.skipped.append(Skipped(source=str(path), reason="not an image file extension"))
            else:
                inputs.files.append(path)
    if len(inputs.files) + len(inputs.failures) == before:
        inputs.failures.append(Failure(source=str(folder), error="a folder holding no image file to score"))


def expand_inputs(named: list[str]) -> Inputs:
    """Resolve the named files and folders; named files are always scored (whatever their extension)."""
    inputs = Inputs()
    for item in named:
        path = Path(item)
        if (reason := _broken_link(path)) is not None:
            inputs.failures.append(Failure(source=item, error=reason))
        elif not path.exists():
            inputs.failures.append(Failure(source=item, error="no such file or folder"))
        elif path.is_dir():
            _scan_folder(path, inputs)
        elif not path.is_file():
            inputs.failures.append(Failure(source=item, error="not a regular file (a pipe, socket or device)"))
        else:
            inputs.files.append(path)
    return inputs


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
        except BadImageError as error:
            failures.append(Failure(source=str(path), error=str(error).removeprefix(f"{path}: ")))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read(path: Path, config: PredictorConfig) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(f"{path}: unreadable ({error.strerror or error})") from None
    return decode_image(data, source=str(path), config=config)


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
    return run_printing_command("predict", lambda stdout: _predict(args, stdout), args.json)


def _predict(args: argparse.Namespace, stdout: TextIO) -> int:
    """The command's body: score (or save the bundle), print the report, return 0 or 1."""
    tracking_uri = None if looks_like_a_path(args.model) else _tracking_uri(args.tracking_uri)
    if args.save_bundle is not None:
        writable_folder(args.save_bundle.parent, "--save-bundle")
        exported, origin = load_registered_model(args.model, tracking_uri=tracking_uri)
        print(f"{origin} written to {exported.save(args.save_bundle)}", file=stdout)
        return EXIT_OK
    config = config_from_options(PredictorConfig, max_pixels=args.max_pixels, min_side=args.min_side, mode=args.mode)
    predictor = load_predictor(args.model, tracking_uri=tracking_uri, config=config)
    inputs = expand_inputs(args.inputs)
    failures = list(inputs.failures)
    predictions: list[Prediction] = []
    for chunk in _decoded(inputs.files, config, failures):
        predictions += predictor.predict_arrays([image for _, image in chunk], [source for source, _ in chunk])
    views = sum(p.views for p in predictions) / len(predictions) if predictions else None
    report = PredictReport(
        model=predictor.origin,
        mode=predictor.mode,
        precision=predictor.precision,
        predictions=predictions,
        failures=failures,
        skipped=inputs.skipped,
        views_per_image=views,
    )
    if args.json:
        print(report.model_dump_json(indent=2), file=stdout)
    else:
        for prediction in predictions:
            print(
                f"{prediction.source}\t{prediction.p_roadwork:.4f}\tviews={prediction.views}"
                + (f"\twarning: {prediction.warning}" if prediction.warning else ""),
                file=stdout,
            )
        for failure in failures:
            print(f"FAILED {failure.source}: {failure.error}", file=sys.stderr)
        for skipped in inputs.skipped:
            print(f"skipped {skipped.source}: {skipped.reason}", file=sys.stderr)
        total = len(predictions) + len(failures) + len(inputs.skipped)
        summary = (
            f"{total} inputs: {len(predictions)} scored, {len(failures)} failed, {len(inputs.skipped)} skipped; "
            f"model {predictor.origin} ({predictor.mode}, {predictor.precision})"
        )
        print(summary + (f", {views:.2f} views/image" if views is not None else ""), file=sys.stderr)
    return EXIT_FINDING if failures or not predictions else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
