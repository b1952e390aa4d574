import pandas as pd
import pytest

from stage1_core.manifest import SPLITS
from stage1_core.splits import ALLOWED_SPLITS, Consumer, LeakageError, SplitConfig, assign_splits, take_split


def _manifest(n_groups: int = 200, frames: int = 3) -> pd.DataFrame:
    rows = []
    for group in range(n_groups):
        for frame in range(frames):
            rows.append({"id": f"{group}-{frame}", "group_id": f"g{group}", "label": int(group % 5 != 0), "source": "natix" if group % 3 else "mapillary"})
    return pd.DataFrame(rows)


def test_groups_never_span_two_splits_and_fractions_hold() -> None:
    split = assign_splits(_manifest(), SplitConfig())
    assert split.groupby("group_id")["split"].nunique().max() == 1
    shares = split["split"].value_counts(normalize=True)
    for name, fraction in SplitConfig().fractions.items():
        assert abs(shares[name] - fraction) < 0.03, (name, shares[name])
    for (label, source), rows in split.groupby(["label", "source"]):
        assert set(rows["split"]) == set(SPLITS), (label, source)


def test_split_is_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    manifest = _manifest()
    first = assign_splits(manifest, SplitConfig(seed=7)).set_index("id")["split"]
    shuffled = assign_splits(manifest.sample(frac=1, random_state=1), SplitConfig(seed=7)).set_index("id")["split"]
    other_seed = assign_splits(manifest, SplitConfig(seed=8)).set_index("id")["split"]
    assert first.sort_index().equals(shuffled.sort_index())
    assert not first.sort_index().equals(other_seed.sort_index())


@pytest.mark.parametrize("consumer", list(Consumer))
def test_each_consumer_reads_only_its_splits(consumer: Consumer) -> None:
    split = assign_splits(_manifest(), SplitConfig())
    for name in SPLITS:
        if name in ALLOWED_SPLITS[consumer]:
            assert (take_split(split, name, consumer)["split"] == name).all()
        else:
            with pytest.raises(LeakageError, match=f"{consumer.value} may not read split '{name}'"):
                take_split(split, name, consumer)


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(fractions={"train": 0.7, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1})
