"""What ingest is told: where the data is, which source to expect, and how Mapillary labels become labels.

Every reader takes an :class:`IngestConfig`, and the config nests :class:`MapillaryConfig`, so both sit below
the readers. The Mapillary label names that config validates against (the roadwork evidence, the labels that
never are) and its labelled split folders live here with it; the Mapillary reader and the demo writer use them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stage1_core.common.config import StrictConfig

Source = Literal["natix", "mapillary", "roadwork", "folder"]

# Exact Mapillary Vistas v2.0 label names that mean roadwork (reference: data-and-evaluator.md).
MAPILLARY_TEMPORARY_BARRIER = "construction--barrier--temporary"
MAPILLARY_TRAFFIC_CONE = "object--traffic-cone"
MAPILLARY_TEMPORARY_SIGN_FRONT = "object--traffic-sign--temporary-front"
MAPILLARY_TEMPORARY_SIGN_BACK = "object--traffic-sign--temporary-back"
MAPILLARY_ROADWORK_LABELS: tuple[str, ...] = (
    MAPILLARY_TEMPORARY_BARRIER,
    MAPILLARY_TRAFFIC_CONE,
    MAPILLARY_TEMPORARY_SIGN_FRONT,
    MAPILLARY_TEMPORARY_SIGN_BACK,
)
# A jersey barrier, also used outside work zones: roadwork evidence only when configured.
MAPILLARY_CONCRETE_BLOCK = "construction--barrier--concrete-block"
MAPILLARY_POTHOLE = "object--pothole"  # the default hard-negative label
# Ordinary road surfaces and permanent structures: a substring match on "construction"/"barrier" would
# make nearly every street image positive, so these can never be configured as roadwork evidence.
MAPILLARY_TRAP_PREFIXES: tuple[str, ...] = ("construction--flat--",)
MAPILLARY_CURB = "construction--barrier--curb"
MAPILLARY_FENCE = "construction--barrier--fence"
MAPILLARY_GUARD_RAIL = "construction--barrier--guard-rail"
MAPILLARY_TRAP_LABELS: tuple[str, ...] = (MAPILLARY_CURB, MAPILLARY_FENCE, MAPILLARY_GUARD_RAIL)
# Vistas' split folders that carry labels (``testing`` has none).
MAPILLARY_LABELLED_SPLITS: tuple[str, ...] = ("training", "validation")


class MapillaryConfig(StrictConfig):
    """How Mapillary Vistas polygons become labels: by exact label names, never by substring."""

    roadwork_labels: list[str] = Field(
        default=list(MAPILLARY_ROADWORK_LABELS),
        description=f"labels that make an image positive; add {MAPILLARY_CONCRETE_BLOCK} to count jersey barriers",
    )
    hard_negative_labels: list[str] = Field(
        default=[MAPILLARY_POTHOLE], description="labels that tag a negative as hard"
    )
    splits: list[str] = Field(
        default=list(MAPILLARY_LABELLED_SPLITS), description="split folders read (testing has no labels)"
    )

    @field_validator("roadwork_labels")
    @classmethod
    def _no_traps(cls, labels: list[str]) -> list[str]:
        traps = [
            label for label in labels if label.startswith(MAPILLARY_TRAP_PREFIXES) or label in MAPILLARY_TRAP_LABELS
        ]
        if traps:
            raise ValueError(
                f"roadwork_labels {traps} are road surfaces or permanent structures, never roadwork evidence; "
                "remove them"
            )
        return labels


class IngestConfig(StrictConfig):
    """Where to read from, what source to expect, and where NATIX's embedded images are written."""

    path: str = "data/demo"
    image_store: str = "data/image_store"
    record_batch_size: int = Field(64, ge=1, description="NATIX rows converted to Python objects at a time")
    source: Source | None = Field(None, description="expected source; None: whatever the detected layout is")
    max_decode_megapixels: float = Field(
        50.0, gt=0, description="larger images are not decoded (their header size is kept and the row is quarantined)"
    )
    orange_red_min_fraction: float = Field(
        0.002,
        ge=0,
        le=1,
        description="a negative with at least this share of orange/red pixels is tagged a hard negative",
    )
    mapillary: MapillaryConfig = MapillaryConfig()
