"""Grouped, stratified splits and the contracts that keep each split to its one consumer.

A sequence of near-duplicate frames must sit in one split only, otherwise val/test scores
measure memorisation. Each downstream use reads its split through :func:`take_split`, which
refuses any other split, so leakage is an error at the point of use, not a silent bias.
"""

from __future__ import annotations

import hashlib
from enum import Enum

import pandas as pd
from pydantic import BaseModel, model_validator

from stage1_core.manifest import SPLITS


class LeakageError(RuntimeError):
    """A consumer asked for a split it may not read."""


class Consumer(str, Enum):
    """Who reads a split; each may read exactly the splits listed in ``ALLOWED_SPLITS``."""

    TRAINING = "training"
    SELF_SUPERVISED = "self_supervised"
    MODEL_SELECTION = "model_selection"
    CALIBRATION = "calibration"
    EVALUATION = "evaluation"
    DRIFT_REFERENCE = "drift_reference"


ALLOWED_SPLITS: dict[Consumer, frozenset[str]] = {
    Consumer.TRAINING: frozenset({"train"}),
    Consumer.SELF_SUPERVISED: frozenset({"train"}),
    Consumer.MODEL_SELECTION: frozenset({"val_select"}),
    Consumer.CALIBRATION: frozenset({"val_calib"}),
    Consumer.EVALUATION: frozenset({"val_test"}),
    Consumer.DRIFT_REFERENCE: frozenset({"train"}),
}


class SplitConfig(BaseModel):
    """Split fractions (train / val_select / val_calib / val_test) and the seed."""

    fractions: dict[str, float] = {"train": 0.6, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1}
    seed: int = 0

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        if set(self.fractions) != set(SPLITS):
            raise ValueError(f"split fractions must name exactly {list(SPLITS)}, got {sorted(self.fractions)}")
        if any(value <= 0 for value in self.fractions.values()) or abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {self.fractions}")
        return self


def _group_order(group_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group_id}".encode()).hexdigest()


def assign_splits(manifest: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Return the manifest with a ``split`` column.

    Groups (``group_id``) are the unit of assignment; within each stratum (label x source) the
    groups are ordered by a seeded hash and dealt out so each split gets its fraction of the
    stratum's images. Deterministic for a seed, independent of row order.
    """
    groups = manifest.groupby("group_id").agg(label=("label", "max"), source=("source", "first"), size=("id", "size")).reset_index()
    groups["order"] = [_group_order(group, config.seed) for group in groups["group_id"]]
    boundaries = pd.Series(config.fractions).reindex(list(SPLITS)).cumsum()
    assignment: dict[str, str] = {}
    for _, stratum in groups.sort_values("order").groupby(["label", "source"], sort=True):
        position = stratum["size"].cumsum() - stratum["size"] / 2
        share = position / stratum["size"].sum()
        for group_id, value in zip(stratum["group_id"], share):
            assignment[group_id] = next(split for split, bound in boundaries.items() if value <= bound + 1e-9)
    return manifest.assign(split=manifest["group_id"].map(assignment)).reset_index(drop=True)


def take_split(manifest: pd.DataFrame, split: str, consumer: Consumer) -> pd.DataFrame:
    """The rows of ``split`` for ``consumer``; any split outside the consumer's contract raises.

    Raises:
        LeakageError: naming the split and the consumer.
    """
    if split not in ALLOWED_SPLITS[consumer]:
        allowed = sorted(ALLOWED_SPLITS[consumer])
        raise LeakageError(f"{consumer.value} may not read split {split!r} (its contract allows only {allowed})")
    if "split" not in manifest.columns:
        raise LeakageError(f"{consumer.value} was given a manifest without a split column: split it before use")
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"split {split!r} is empty: the dataset is too small for the configured fractions")
    return rows


def split_counts(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per split and label, for logs and metadata."""
    table = manifest.groupby(["split", "label"]).size()
    return {split: {str(label): int(count) for label, count in table[split].items()} for split in table.index.levels[0]}
