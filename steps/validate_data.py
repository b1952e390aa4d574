"""Validate step: Great Expectations suite, quarantine of failing rows."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from stage1_core.data.validation import DataValidationError, ValidationConfig, ValidationReport, validate_manifest


@step
def validate_data(
    manifest: pd.DataFrame, config: ValidationConfig
) -> tuple[
    Annotated[pd.DataFrame, "valid_manifest"],
    Annotated[pd.DataFrame, "quarantine"],
    Annotated[ValidationReport, "validation_report"],
]:
    """Split the manifest into valid rows and quarantined rows with reasons.

    A critical failure does not raise here: the quarantine and the report are stored first, and
    the split step stops the run on the report's ``critical_failure``.
    """
    try:
        result = validate_manifest(manifest, config)
    except DataValidationError as error:
        result = error.result
    log_metadata(
        {
            "ingested": result.report.n_ingested,
            "valid": result.report.n_valid,
            "quarantined": result.report.n_quarantined,
            "critical_failure": result.report.critical_failure,
        }
    )
    return result.valid, result.quarantine, result.report
