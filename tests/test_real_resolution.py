"""Real-resolution photos (1920x1080, 4032x3024; baseline and progressive JPEGs, some EXIF-turned) in the NATIX
parquet and folder layouts: ingest, validation and split read them; training, evaluation, export and the
predictor run on them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from stage1_core.common.logit_map import LogitMap
from stage1_core.data.images import load_uint8_images
from stage1_core.data.ingest import ingest
from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.splits import SplitConfig, assign_splits
from stage1_core.data.validation import ValidationConfig, validate_manifest
from stage1_core.demo.config import DemoDataConfig
from stage1_core.demo.writers import generate_demo_dataset
from stage1_core.export.exporter import ExportConfig, TensorRTConfig, export_onnx
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.inference import predict_logits
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import TrainConfig, train_classifier
from stage1_core.serving.predictor import Predictor

TURNED = {3, 6, 8}


@pytest.fixture(scope="module")
def natix_photos(session_dir: Path) -> Path:
    """Four 4032x3024 photos in NATIX parquet shards, two rows per row group (several groups per shard)."""
    config = DemoDataConfig(
        n_images=4,
        seed=8,
        image_width=4032,
        image_height=3024,
        frames_per_sequence=2,
        progressive_share=0.5,
        exif_orientation_share=0.5,
        row_group_rows=2,
        test_fraction=0.0,
    )
    return generate_demo_dataset(session_dir / "natix_photos", config)


def _jpeg_facts(data: bytes) -> tuple[bool, int, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return bool(image.info.get("progressive")), image.getexif().get(0x0112, 1), image.size


def test_photos_are_baseline_and_progressive_jpegs_some_stored_turned(real_resolution_photos) -> None:
    facts = [
        _jpeg_facts(path.read_bytes()) for root in real_resolution_photos.values() for path in root.glob("*/*.jpg")
    ]
    assert {progressive for progressive, _, _ in facts} == {True, False}
    assert {orientation for _, orientation, _ in facts} - {1} <= TURNED and any(o != 1 for _, o, _ in facts)
    for _, orientation, (width, height) in facts:
        assert (width < height) == (orientation in (6, 8)), "turned left or right: stored portrait"


def test_an_exif_turned_photo_is_the_upright_frame_once_the_tag_is_applied(
    real_resolution_photos, tmp_path: Path
) -> None:
    upright_config = DemoDataConfig(
        n_images=6, seed=7, image_width=1920, image_height=1080, layout="folder", frames_per_sequence=1
    )
    upright = generate_demo_dataset(tmp_path / "upright", upright_config)
    compared = 0
    for path in sorted(real_resolution_photos["1920x1080"].glob("*/*.jpg")):
        with Image.open(path) as stored:
            if stored.getexif().get(0x0112, 1) == 1:
                continue
            turned = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), dtype=np.float32)
        reference = np.asarray(Image.open(upright / path.parent.name / path.name).convert("RGB"), dtype=np.float32)
        assert turned.shape == reference.shape and np.abs(turned - reference).mean() < 2.0, path.name
        compared += 1
    assert compared


def test_ingest_validate_and_split_read_real_resolution_photos(
    natix_photos: Path, real_resolution_photos, session_dir: Path
) -> None:
    store = str(session_dir / "photo_store")
    sources = {"natix": natix_photos, **real_resolution_photos}
    frames: list[pd.DataFrame] = []
    for name, root in sources.items():
        manifest = ingest(IngestConfig(path=str(root), image_store=store))
        truth = pd.read_parquet(root / "demo_truth.parquet")
        width, height = (4032, 3024) if name in ("natix", "4032x3024") else (1920, 1080)
        assert len(manifest) == len(truth) and (manifest["decode_error"] == "").all()
        assert (manifest["width"] == width).all() and (manifest["height"] == height).all(), "upright sizes"
        assert (manifest["phash"].str.len() == 16).all()
        report = validate_manifest(manifest, ValidationConfig())
        assert len(report.valid) == len(manifest), f"{name}: no real-resolution photo is quarantined"
        split = assign_splits(report.valid, SplitConfig())
        assert split["split"].notna().all() and split.groupby("group_id")["split"].nunique().max() == 1
        frames.append(manifest)
    stored = [_jpeg_facts(Path(uri).read_bytes()) for uri in frames[0]["uri"]]
    assert {orientation for _, orientation, _ in stored} != {1}, "the image store keeps the camera's bytes"


@pytest.mark.slow
def test_training_evaluation_export_and_prediction_run_on_real_resolution_photos(
    real_resolution_photos, session_dir: Path, tmp_path: Path
) -> None:
    store = str(session_dir / "photo_store")
    manifest = pd.concat(  # the two folders hold the same file names: ids prefixed by the photo size
        [
            ingest(IngestConfig(path=str(root), image_store=store)).pipe(
                lambda frame, size=size: frame.assign(id=size + frame["id"])
            )
            for size, root in real_resolution_photos.items()
        ],
        ignore_index=True,
    )
    manifest = manifest.assign(split_group=manifest["group_id"], split="train")
    val_rows = manifest.groupby("label").head(2).index
    manifest.loc[val_rows, "split"] = "val_select"
    train, val_select = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val_select"]
    model = RoadworkClassifier(load_backbone("dinov2-demo"), ClassifierConfig(multiview=MultiViewConfig(view_size=28)))
    config = TrainConfig(max_epochs=1, batch_size=4, top_k_candidates=[], checkpoint_root=None)
    trained, summary = train_classifier(model, train, val_select, config)
    assert summary.epochs_run == 1 and np.isfinite(summary.history[0]["val_select_loss"])

    logits = predict_logits(trained, val_select)
    assert logits.shape == (len(val_select),) and np.isfinite(logits).all()

    images = load_uint8_images(val_select.head(2))
    assert all(image.shape[0] == 3 and min(image.shape[1:]) in (1080, 3024) for image in images)
    exported = export_onnx(
        trained, LogitMap.from_temperature(1.0), 0.5, images, ExportConfig(tensorrt=TensorRTConfig(enabled=False))
    )
    assert exported.metadata.parity[0].passed
    predictor = Predictor(exported)
    for uri in val_select["uri"]:
        prediction = predictor.predict_bytes(Path(uri).read_bytes(), source=Path(uri).name)
        assert 0.0 <= prediction.p_roadwork <= 1.0
    with torch.no_grad():
        direct = torch.sigmoid(trained.score_images(images)).numpy()
    served = [predictor.predict_bytes(Path(uri).read_bytes()).p_roadwork for uri in val_select["uri"].head(2)]
    assert np.abs(np.asarray(served) - direct).max() < 1e-3, "the server decodes the photo as training did"
