"""Test isolation: a private ZenML config/store per test session, no analytics, no hub access."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="roadwork-tests-"))
os.environ["ZENML_CONFIG_PATH"] = str(_SESSION_DIR / "zenml")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stage1_core.data.ingest import ingest  # noqa: E402
from stage1_core.data.sources.config import IngestConfig  # noqa: E402
from stage1_core.demo.config import DemoDataConfig  # noqa: E402
from stage1_core.demo.writers import generate_demo_dataset  # noqa: E402


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def demo_dataset(session_dir: Path) -> Path:
    """A small demo dataset in the NATIX parquet layout, generated once per test session."""
    return generate_demo_dataset(
        session_dir / "demo", DemoDataConfig(n_images=64, seed=3, image_width=320, image_height=240)
    )


@pytest.fixture(scope="session")
def demo_manifest(demo_dataset: Path, session_dir: Path) -> pd.DataFrame:
    """The demo dataset ingested into the unified manifest."""
    return ingest(IngestConfig(path=str(demo_dataset), image_store=str(session_dir / "image_store")))


@pytest.fixture(scope="session")
def real_resolution_photos(session_dir: Path) -> dict[str, Path]:
    """Demo photos as cameras save them, in the folder layout: 1920x1080 and 4032x3024, half of them progressive,
    half stored turned with an EXIF Orientation tag (6 of each size; about 10 s to render)."""
    return {
        size: generate_demo_dataset(
            session_dir / f"photos_{size}",
            DemoDataConfig(
                n_images=6,
                seed=7,
                image_width=int(size.split("x")[0]),
                image_height=int(size.split("x")[1]),
                layout="folder",
                frames_per_sequence=1,
                progressive_share=0.5,
                exif_orientation_share=0.5,
            ),
        )
        for size in ("1920x1080", "4032x3024")
    }
