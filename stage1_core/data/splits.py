"""Grouped, stratified splits and the contracts that keep each split to its one consumer.

A sequence of near-duplicate frames must sit in one split only, otherwise val/test scores
measure memorisation. Sequences come from the source (``group_id``); near-duplicates the source
does not know about (re-uploads, re-encodes, the same corner shot twice) are found by perceptual
hash distance, gathered into star clusters (every member within the distance bound of the cluster's
centre, so look-alike street scenes linked pair by pair cannot chain into one giant group) and merged
with the sequences into one ``split_group`` per connected component.
Each downstream use reads its split through :func:`take_split`, which refuses any other split, so
leakage is an error at the point of use, not a silent bias.
"""

from __future__ import annotations

import hashlib
import logging
from enum import StrEnum

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stage1_core.common.cli import Finding
from stage1_core.common.config import StrictConfig
from stage1_core.common.manifest import SPLITS

logger = logging.getLogger(__name__)

SPLIT_GROUP_COLUMN = "split_group"
_PAIR_BLOCK = 256  # hashes compared against all others at a time: memory ~ 8 bytes * block * n


class LeakageError(RuntimeError):
    """A consumer asked for a split it may not read."""


class SplitClassError(Finding, ValueError):
    """A split lacks one of the classes: the data cannot train, calibrate or evaluate a classifier."""


class Consumer(StrEnum):
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


class SplitConfig(StrictConfig):
    """Split fractions (train / val_select / val_calib / val_test), the seed, and how groups are formed."""

    fractions: dict[str, float] = {"train": 0.6, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1}
    seed: int = 0
    near_duplicate_max_distance: int | None = Field(
        6, ge=0, le=64, description="pHash Hamming distance at or below which two images are one group; None: off"
    )
    natix_test_as_val_test: bool = Field(
        False, description="val_test = NATIX's official test split; the other groups fill the other three splits"
    )

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        if set(self.fractions) != set(SPLITS):
            raise ValueError(f"split fractions must name exactly {list(SPLITS)}, got {sorted(self.fractions)}")
        if any(value <= 0 for value in self.fractions.values()) or abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {self.fractions}")
        return self


def _group_order(group_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group_id}".encode()).hexdigest()


def near_duplicate_pairs(phashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of 64-bit hashes within ``max_distance`` bits of each other.

    Exact all-pairs comparison in blocks (XOR and popcount), so memory stays ``O(block * n)``;
    fine up to some 10^5 distinct hashes.
    """
    firsts, seconds = [], []
    for start in range(0, len(phashes), _PAIR_BLOCK):
        block = phashes[start : start + _PAIR_BLOCK]
        distance = np.bitwise_count(block[:, None] ^ phashes[None, start:])
        rows, cols = np.nonzero(np.triu(distance <= max_distance, k=1))
        firsts.append(rows + start)
        seconds.append(cols + start)
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(firsts), np.concatenate(seconds)) if firsts else (empty, empty)


def star_centres(n_nodes: int, first: np.ndarray, second: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Per node, the centre of its star cluster (Aslam et al. 2004, "The star clustering algorithm").

    Nodes are visited by falling degree (ties: ascending ``order_key``, so the result does not depend on
    the input order); an unassigned node becomes a centre and takes its unassigned neighbours as
    satellites. Every member is a direct neighbour of its centre: with links at pHash distance <= d, a
    cluster's diameter is at most 2d however long a chain of look-alikes is, whereas connected components
    of the same links merge a whole chain (each image a few bits from the next) into one group.
    """
    adjacency = coo_matrix(
        (np.ones(2 * len(first), dtype=np.int8), (np.concatenate([first, second]), np.concatenate([second, first]))),
        shape=(n_nodes, n_nodes),
    ).tocsr()
    degree = np.diff(adjacency.indptr)
    centre = np.full(n_nodes, -1, dtype=np.int64)
    for node in np.lexsort((order_key, -degree)):
        if centre[node] >= 0:
            continue
        centre[node] = node
        neighbours = adjacency.indices[adjacency.indptr[node] : adjacency.indptr[node + 1]]
        free = neighbours[centre[neighbours] < 0]
        centre[free] = node
    return centre


def _distinct_hashes(phash: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows that have a hash, each such row's index into the distinct hashes, the distinct hashes as uint64)."""
    text = phash.fillna("").astype(str)
    hashed = (text != "").to_numpy()
    codes, unique = pd.factorize(text[hashed], sort=True)
    return hashed, codes, np.array([int(value, 16) for value in unique], dtype=np.uint64)


def near_duplicate_clusters(phash: pd.Series, max_distance: int) -> np.ndarray:
    """Per row, its star cluster (:func:`star_centres`) of hashes within ``max_distance`` bits (-1: no hash).

    Copies of one photo (re-encodes, resizes, re-uploads) fall in one cluster; sequences are not merged in, so
    the frames of one video (which may rightly change label midway) stay apart unless they look alike.
    """
    hashed, codes, values = _distinct_hashes(phash)
    clusters = np.full(len(phash), -1, dtype=np.int64)
    if not hashed.any():
        return clusters
    first, second = near_duplicate_pairs(values, max_distance)
    clusters[hashed] = star_centres(len(values), first, second, order_key=np.arange(len(values)))[codes]
    return clusters


def split_groups(manifest: pd.DataFrame, max_distance: int | None) -> pd.Series:
    """Per row, the group it must share a split with: sequences (``group_id``) joined with pHash near-duplicates.

    A graph whose nodes are the group ids and the near-duplicate clusters (:func:`near_duplicate_clusters`:
    star clusters of the hashes within ``max_distance`` bits): each row links its group to its cluster, and
    every connected component becomes one group, named by its smallest ``group_id`` so the result does not
    depend on row order. Rows without a hash (undecodable) keep their own group.
    """
    group_codes, group_names = pd.factorize(manifest["group_id"].astype(str), sort=True)
    clusters = near_duplicate_clusters(manifest["phash"], max_distance) if max_distance is not None else None
    if clusters is None or not (clusters >= 0).any():
        return pd.Series(np.asarray(group_names)[group_codes], index=manifest.index, name=SPLIT_GROUP_COLUMN)
    hashed = clusters >= 0
    n_groups = len(group_names)
    sources, targets = group_codes[hashed], clusters[hashed] + n_groups
    size = n_groups + int(clusters.max()) + 1
    graph = coo_matrix((np.ones(len(sources), dtype=np.int8), (sources, targets)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    # Group names are sorted, so the first group index met in each component names it canonically.
    names = pd.Series(np.asarray(group_names)).groupby(component[:n_groups]).transform("first").to_numpy()
    merged = pd.Series(names[group_codes], index=manifest.index, name=SPLIT_GROUP_COLUMN)
    n_merged = int(manifest["group_id"].nunique() - merged.nunique())
    if n_merged:
        logger.info(
            "near-duplicate clustering (pHash distance <= %d) merged %d groups; rows per group: %s",
            max_distance,
            n_merged,
            group_size_distribution(merged),
        )
    return merged


def group_size_distribution(groups: pd.Series) -> dict[int, int]:
    """Group size -> number of groups of that size, smallest first: how the split's units are made up."""
    return {int(size): int(count) for size, count in groups.value_counts().value_counts().sort_index().items()}


def _deal(groups: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Within each stratum (label x source) deal the hash-ordered groups so each split gets its fraction of rows."""
    names = [split for split in SPLITS if split in fractions]
    boundaries = (pd.Series(fractions).reindex(names) / sum(fractions.values())).cumsum()
    ordered = groups.assign(order=[_group_order(group, seed) for group in groups[SPLIT_GROUP_COLUMN]]).sort_values(
        "order"
    )
    assignment: dict[str, str] = {}
    for _, stratum in ordered.groupby(["label", "source"], sort=True):
        position = stratum["size"].cumsum() - stratum["size"] / 2
        share = position / stratum["size"].sum()
        for group_id, value in zip(stratum[SPLIT_GROUP_COLUMN], share):
            assignment[group_id] = next(split for split, bound in boundaries.items() if value <= bound + 1e-9)
    return assignment


def assign_splits(manifest: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Return the manifest with ``split`` and ``split_group`` columns.

    Split groups (sequences merged with near-duplicate clusters) are the unit of assignment; within
    each stratum (label x source) they are ordered by a seeded hash and dealt out so each split gets
    its fraction of the stratum's images. Deterministic for a seed, independent of row order. With
    ``natix_test_as_val_test``, every group holding a NATIX official-test row is val_test (so a
    near-duplicate of a test image never trains) and the rest fill train / val_select / val_calib.
    """
    frame = manifest.assign(**{SPLIT_GROUP_COLUMN: split_groups(manifest, config.near_duplicate_max_distance)})
    official_test = (frame["source"] == "natix") & (frame["official_split"] == "test")
    groups = (
        frame.assign(official_test=official_test)
        .groupby(SPLIT_GROUP_COLUMN)
        .agg(
            label=("label", "max"),
            source=("source", "min"),
            size=("id", "size"),
            official_test=("official_test", "any"),
        )
        .reset_index()
    )
    if config.natix_test_as_val_test:
        fixed = groups[groups["official_test"]]
        fractions = {split: value for split, value in config.fractions.items() if split != "val_test"}
        assignment = _deal(groups[~groups["official_test"]], fractions, config.seed)
        assignment |= dict.fromkeys(fixed[SPLIT_GROUP_COLUMN], "val_test")
        pulled = int((frame[SPLIT_GROUP_COLUMN].isin(fixed[SPLIT_GROUP_COLUMN]) & ~official_test).sum())
        if pulled:
            logger.info("%d rows share a group with NATIX official-test rows and go to val_test with them", pulled)
    else:
        assignment = _deal(groups, config.fractions, config.seed)
    return frame.assign(split=frame[SPLIT_GROUP_COLUMN].map(assignment)).reset_index(drop=True)


def check_groups_within_one_split(manifest: pd.DataFrame) -> None:
    """The split contract on groups: no sequence and no near-duplicate cluster spans two splits.

    Raises:
        LeakageError: naming a group found in several splits and those splits.
    """
    for column in ("group_id", SPLIT_GROUP_COLUMN):
        if column not in manifest.columns:
            continue
        spread = manifest.groupby(column)["split"].nunique()
        leaking = spread[spread > 1]
        if not leaking.empty:
            group = leaking.index[0]
            splits = sorted(manifest.loc[manifest[column] == group, "split"].unique())
            raise LeakageError(
                f"{len(leaking)} {column} values span several splits, e.g. {group!r} in {splits}: re-run assign_splits"
            )


def take_split(manifest: pd.DataFrame, split: str, consumer: Consumer) -> pd.DataFrame:
    """The rows of ``split`` for ``consumer``; any split outside the consumer's contract raises.

    The group contract is checked again here, so a manifest edited after splitting (a sequence moved
    into another split) is caught by every consumer, not only by the split step.

    Raises:
        LeakageError: naming the split and the consumer, or a group that spans several splits.
    """
    if split not in ALLOWED_SPLITS[consumer]:
        allowed = sorted(ALLOWED_SPLITS[consumer])
        raise LeakageError(f"{consumer.value} may not read split {split!r} (its contract allows only {allowed})")
    if "split" not in manifest.columns:
        raise LeakageError(f"{consumer.value} was given a manifest without a split column: split it before use")
    check_groups_within_one_split(manifest)
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"split {split!r} is empty: the dataset is too small for the configured fractions")
    return rows


def class_counts_text(manifest: pd.DataFrame) -> str:
    """Images per split and label in one line, e.g. ``train 0:10 1:14, val_select 0:2 1:4, ...``."""
    table = manifest.groupby(["split", "label"]).size().unstack(fill_value=0).reindex(index=list(SPLITS), fill_value=0)
    table = table.reindex(columns=sorted({0, 1} | set(table.columns)), fill_value=0)
    return ", ".join(
        f"{split} " + " ".join(f"{label}:{int(count)}" for label, count in row.items())
        for split, row in table.iterrows()
    )


def check_split_classes(manifest: pd.DataFrame) -> None:
    """Every split holds both classes: training, early stopping, calibration and evaluation each need negatives
    and positives (a one-class val_calib would fail calibration after minutes of training).

    Raises:
        SplitClassError: naming the splits that lack a class and the counts per split and label.
    """
    present = manifest[manifest["label"].isin([0, 1])].groupby("split")["label"].agg(lambda labels: set(labels))
    lacking = [
        f"{split} has no image labelled {missing}"
        for split in SPLITS
        for missing in sorted({0, 1} - present.get(split, set()))
    ]
    if lacking:
        raise SplitClassError(
            f"{'; '.join(lacking)} (images per split and label: {class_counts_text(manifest)}). Training, "
            "calibration and evaluation each need both classes: add images of the missing class, or change "
            "split.fractions"
        )


def split_counts(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per split and label, for logs and metadata."""
    table = manifest.groupby(["split", "label"]).size()
    return {split: {str(label): int(count) for label, count in table[split].items()} for split in table.index.levels[0]}


def bootstrap_groups(rows: pd.DataFrame) -> np.ndarray:
    """The groups the bootstrap resamples: the split groups, since the frames of a sequence (and near-duplicates)
    are not independent draws and resampling them one by one would give intervals that are too narrow.

    Raises:
        ValueError: ``rows`` did not come from the split manifest (no split group column).
    """
    if SPLIT_GROUP_COLUMN not in rows:
        raise ValueError(
            f"rows have no {SPLIT_GROUP_COLUMN!r} column: pass rows of the split manifest (the split step adds it)"
        )
    return rows[SPLIT_GROUP_COLUMN].astype(str).to_numpy()
