import numpy as np
import pandas as pd
import pytest

from stage1_core.common.manifest import SPLITS
from stage1_core.data.splits import (
    ALLOWED_SPLITS,
    Consumer,
    LeakageError,
    SplitClassError,
    SplitConfig,
    assign_splits,
    check_groups_within_one_split,
    check_split_classes,
    near_duplicate_clusters,
    near_duplicate_pairs,
    split_groups,
    take_split,
)


def _far_hashes(n: int, seed: int = 0) -> list[int]:
    """Random 64-bit hashes, re-drawn until every pair differs in more than 16 bits."""
    rng = np.random.default_rng(seed)
    hashes: list[int] = []
    while len(hashes) < n:
        candidate = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        if all(bin(candidate ^ other).count("1") > 16 for other in hashes):
            hashes.append(candidate)
    return hashes


def _flip(value: int, bits: int) -> int:
    return value ^ ((1 << bits) - 1)  # flips the lowest ``bits`` bits: distance exactly ``bits``


def _manifest(n_groups: int = 200, frames: int = 3) -> pd.DataFrame:
    hashes = _far_hashes(n_groups * frames)
    rows = []
    for group in range(n_groups):
        for frame in range(frames):
            rows.append(
                {
                    "id": f"{group}-{frame}",
                    "group_id": f"g{group}",
                    "label": int(group % 5 != 0),
                    "source": "natix" if group % 3 else "mapillary",
                    "official_split": "train",
                    "phash": f"{hashes[group * frames + frame]:016x}",
                }
            )
    return pd.DataFrame(rows)


def test_groups_never_span_two_splits_and_fractions_hold() -> None:
    split = assign_splits(_manifest(), SplitConfig())
    assert split.groupby("group_id")["split"].nunique().max() == 1
    shares = split["split"].value_counts(normalize=True)
    for name, fraction in SplitConfig().fractions.items():
        assert abs(shares[name] - fraction) < 0.03, (name, shares[name])
    for (label, source), rows in split.groupby(["label", "source"]):
        assert set(rows["split"]) == set(SPLITS), (label, source)
    check_groups_within_one_split(split)


def test_split_is_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    manifest = _manifest()
    first = assign_splits(manifest, SplitConfig(seed=7)).set_index("id")["split"]
    shuffled = assign_splits(manifest.sample(frac=1, random_state=1), SplitConfig(seed=7)).set_index("id")["split"]
    other_seed = assign_splits(manifest, SplitConfig(seed=8)).set_index("id")["split"]
    assert first.sort_index().equals(shuffled.sort_index())
    assert not first.sort_index().equals(other_seed.sort_index())


def test_near_duplicate_pairs_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, size=600, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    hashes[300:] = hashes[:300] ^ np.uint64(0b111)  # 300 planted pairs at distance 3
    first, second = near_duplicate_pairs(hashes, 5)
    expected = {
        (i, j) for i in range(600) for j in range(i + 1, 600) if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 5
    }
    assert set(zip(first.tolist(), second.tolist())) == expected
    assert len(expected) >= 300 and (first < second).all()


def test_near_duplicates_and_sequences_merge_transitively() -> None:
    manifest = _manifest(n_groups=6, frames=2)
    base = int(manifest.loc[0, "phash"], 16)
    # g1's first frame is 4 bits from g0's first frame; g2's is 4 bits from g1's: a chain g0-g1-g2.
    manifest.loc[2, "phash"] = f"{_flip(base, 4):016x}"
    manifest.loc[4, "phash"] = f"{_flip(base, 8):016x}"
    manifest.loc[6, "phash"] = ""  # undecodable: stays in its own sequence group
    groups = split_groups(manifest, max_distance=4)
    assert set(groups[manifest["group_id"].isin(["g0", "g1", "g2"])]) == {"g0"}
    assert groups[manifest["group_id"] == "g3"].tolist() == ["g3", "g3"]
    assert groups.nunique() == 4
    assert split_groups(manifest, max_distance=3).nunique() == 6, "distance 4 is above a bound of 3"
    assert split_groups(manifest, max_distance=None).tolist() == manifest["group_id"].tolist()
    reordered = split_groups(manifest.iloc[::-1], max_distance=4)
    assert reordered.sort_index().equals(groups.sort_index())


def test_a_near_duplicate_cluster_lands_in_one_split() -> None:
    manifest = _manifest(n_groups=100, frames=1)
    base = int(manifest.loc[0, "phash"], 16)
    for row in range(1, 40):  # 40 re-encodes of one image, each its own "sequence"
        manifest.loc[row, "phash"] = f"{_flip(base, row % 3):016x}"
    split = assign_splits(manifest, SplitConfig())
    assert split.loc[:39, "split"].nunique() == 1
    assert split.loc[:39, "split_group"].nunique() == 1
    without = assign_splits(manifest, SplitConfig(near_duplicate_max_distance=None))
    assert without.loc[:39, "split"].nunique() > 1, "without clustering the copies would leak across splits"
    with pytest.raises(LeakageError, match="split_group values span several splits"):
        check_groups_within_one_split(without.assign(split_group=split["split_group"]))


def test_natix_official_test_becomes_val_test() -> None:
    manifest = _manifest(n_groups=120, frames=2)
    test_groups = manifest["group_id"].isin([f"g{i}" for i in range(0, 120, 4)])
    manifest.loc[test_groups, "official_split"] = "test"
    manifest.loc[test_groups, "source"] = "natix"
    split = assign_splits(manifest, SplitConfig(natix_test_as_val_test=True))
    assert (split.loc[test_groups.to_numpy(), "split"] == "val_test").all()
    assert (split.loc[~test_groups.to_numpy(), "split"] != "val_test").all()
    rest = split.loc[~test_groups.to_numpy(), "split"].value_counts(normalize=True)
    assert abs(rest["train"] - 0.6 / 0.9) < 0.05 and abs(rest["val_select"] - 0.15 / 0.9) < 0.05


@pytest.mark.parametrize("consumer", list(Consumer))
def test_each_consumer_reads_only_its_splits(consumer: Consumer) -> None:
    split = assign_splits(_manifest(), SplitConfig())
    for name in SPLITS:
        if name in ALLOWED_SPLITS[consumer]:
            assert (take_split(split, name, consumer)["split"] == name).all()
        else:
            with pytest.raises(LeakageError, match=f"{consumer.value} may not read split '{name}'"):
                take_split(split, name, consumer)


def test_a_sequence_spanning_two_splits_is_caught() -> None:
    split = assign_splits(_manifest(), SplitConfig())
    split.loc[0, "split"] = "val_test" if split.loc[0, "split"] != "val_test" else "train"
    with pytest.raises(LeakageError, match="group_id values span several splits, e.g. 'g0'"):
        check_groups_within_one_split(split)


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(fractions={"train": 0.7, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1})


def test_a_split_without_a_class_is_named_with_the_counts_per_split_and_label() -> None:
    manifest = assign_splits(_manifest(n_groups=100, frames=1), SplitConfig())
    check_split_classes(manifest)  # 20 negatives spread over the four splits: fine
    rare = manifest[(manifest["label"] == 1) | (manifest["split"] != "val_calib")]
    with pytest.raises(SplitClassError, match=r"^val_calib has no image labelled 0 \(images per split and label: "):
        check_split_classes(rare)
    with pytest.raises(SplitClassError, match=r"val_test 0:\d+ 1:\d+\)"):
        check_split_classes(rare)
    positives = manifest[manifest["label"] == 1]
    with pytest.raises(SplitClassError, match="train has no image labelled 0; val_select has no image labelled 0"):
        check_split_classes(positives)


def test_near_duplicate_clusters_join_copies_but_not_the_frames_of_a_sequence() -> None:
    far = _far_hashes(3)
    phash = pd.Series([f"{far[0]:016x}", f"{_flip(far[0], 4):016x}", f"{far[1]:016x}", "", f"{far[2]:016x}"])
    clusters = near_duplicate_clusters(phash, max_distance=6)
    assert clusters[0] == clusters[1] and len({clusters[0], clusters[2], clusters[4]}) == 3 and clusters[3] == -1
    assert len(set(near_duplicate_clusters(phash, max_distance=2)[:2])) == 2
