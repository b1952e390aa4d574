"""Split step: grouped, stratified train / val_select / val_calib / val_test."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.splits import (
    SplitConfig,
    assign_splits,
    check_groups_within_one_split,
    check_split_classes,
    split_counts,
)
from stage1_core.data.validation import ValidationReport, raise_on_critical_failure


@step
def split_data(
    manifest: pd.DataFrame, validation_report: ValidationReport, config: SplitConfig
) -> Annotated[pd.DataFrame, "split_manifest"]:
    """Assign every valid row to one split; stops the run, before any training, if validation failed critically
    or a split lacks a class."""
    raise_on_critical_failure(validation_report)
    split = assign_splits(manifest, config)
    check_groups_within_one_split(split)
    check_split_classes(split)
    log_metadata({"split_counts": split_counts(split), "seed": config.seed})
    return split
