"""Validate a manifest with Great Expectations and quarantine the rows that fail.

Bad rows are never dropped: every row ends in exactly one of ``valid`` or ``quarantine``, and
each quarantined row carries the reasons it failed, so a data problem can be fixed at its source
and the rows re-ingested. GE 1.x runs on an ephemeral context over a pandas data source; ZenML's
own GE integration needs GE < 1.0 and is not used.

Row-level failures are mapped back to rows through GE's ``unexpected_index_list``. We hand GE a
manifest with a fresh ``RangeIndex`` and read the positions from it, not the ``id`` column:
duplicate ids are one of the failures we look for, and an ambiguous key cannot point at a row.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from collections.abc import Callable

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.expectations.row_conditions import Column
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stage1_core.common.config import StrictConfig
from stage1_core.common.manifest import MANIFEST_COLUMNS
from stage1_core.common.reports import Report

logger = logging.getLogger(__name__)
# GE logs one INFO line per public-API closure whenever a context starts: hundreds of lines of noise per run.
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)

MEGAPIXELS_COLUMN = "megapixels"  # derived for the size check only; never part of the output
SCHEMA_CHECK = "schema"
NOT_EMPTY_CHECK = "not_empty"
CLASS_BALANCE_CHECK = "class_balance"
ID_UNIQUE_CHECK = "id_unique"
SHA256_UNIQUE_CHECK = "sha256_unique"
DECODABLE_CHECK = "decodable"
INGEST_ERROR_CHECK = "ingest_error"
DATASET_CHECKS = frozenset({SCHEMA_CHECK, NOT_EMPTY_CHECK, CLASS_BALANCE_CHECK})


class ValidationConfig(StrictConfig):
    """Bounds of the manifest suite; defaults fit NATIX (about 80-90% positives, multi-megapixel JPEGs)."""

    min_side: int = Field(64, ge=1, description="smallest accepted width and height, in pixels")
    max_megapixels: float = Field(50.0, gt=0, description="largest accepted width * height / 1e6")
    natix_consistency: bool = Field(True, description="NATIX rule: label 1 iff scene_description is non-empty")
    min_positive_rate: float = Field(0.05, ge=0, le=1)
    max_positive_rate: float = Field(0.95, ge=0, le=1)
    max_failure_rate: float = Field(0.2, ge=0, le=1, description="quarantined / ingested above this is critical")
    html_sample_rows: int = Field(50, ge=0, description="quarantined rows shown in the HTML report")

    @model_validator(mode="after")
    def _rates_ordered(self) -> ValidationConfig:
        if self.min_positive_rate > self.max_positive_rate:
            raise ValueError(
                f"min_positive_rate {self.min_positive_rate} > max_positive_rate {self.max_positive_rate}; swap them"
            )
        return self


class ExpectationOutcome(BaseModel):
    """One expectation of the suite and how the manifest fared against it."""

    name: str
    description: str
    row_level: bool
    success: bool
    unexpected_count: int | None = None
    observed_value: str | None = None
    error: str | None = None


class ValidationReport(Report):
    """Counts, per-expectation outcomes and an HTML rendering of one validation run."""

    n_ingested: int
    n_valid: int
    n_quarantined: int
    failure_rate: float
    max_failure_rate: float
    missing_columns: list[str]
    reason_counts: dict[str, int] = Field(description="quarantined rows per failed check (a row may count in several)")
    expectations: list[ExpectationOutcome]
    critical_failure: bool
    critical_reasons: list[str]
    html: str

    def visualizations(self) -> dict[str, str]:
        return {"validation.html": self.html}

    def metadata(self) -> dict[str, float | int | str | bool]:
        return {
            "n_ingested": self.n_ingested,
            "n_valid": self.n_valid,
            "n_quarantined": self.n_quarantined,
            "failure_rate": self.failure_rate,
            "critical_failure": self.critical_failure,
        }


class ValidationResult(BaseModel):
    """The manifest split into rows fit for training and rows kept aside with their reasons."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    valid: pd.DataFrame
    quarantine: pd.DataFrame
    report: ValidationReport


class DataValidationError(ValueError):
    """The manifest failed critically; ``result`` still holds the valid rows and the quarantine."""

    def __init__(self, message: str, result: ValidationResult | None) -> None:
        super().__init__(message)
        self.result = result


def _check(expectation: gxe.Expectation, name: str, description: str) -> gxe.Expectation:
    expectation.meta = {"check": name}
    expectation.description = description
    return expectation


def _build_suite(config: ValidationConfig) -> gx.ExpectationSuite:
    """The manifest suite; ``meta.check`` names each expectation, its description is the row's reason.

    GE 1.x needs an active data context before a suite accepts expectations.
    """
    suite = gx.ExpectationSuite(name="manifest")
    expectations = [
        _check(
            gxe.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=False),
            SCHEMA_CHECK,
            "manifest columns missing",
        ),
        _check(gxe.ExpectTableRowCountToBeBetween(min_value=1), NOT_EMPTY_CHECK, "manifest has no rows"),
        _check(
            gxe.ExpectColumnMeanToBeBetween(
                column="label",
                min_value=config.min_positive_rate,
                max_value=config.max_positive_rate,
                row_condition=Column("label").is_in([0, 1]),
            ),
            CLASS_BALANCE_CHECK,
            f"positive rate outside [{config.min_positive_rate:g}, {config.max_positive_rate:g}]",
        ),
        _check(
            gxe.ExpectColumnValuesToBeInSet(column="decode_error", value_set=[""]),
            DECODABLE_CHECK,
            "image not decodable",
        ),
        _check(
            gxe.ExpectColumnValuesToNotMatchRegex(column="extras", regex=r'"ingest_error"\s*:'),
            INGEST_ERROR_CHECK,
            "source adapter reported a problem",
        ),
        _check(
            gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
            "sha256_format",
            "sha256 is not a 64-character hex digest (file unreadable?)",
        ),
        _check(
            gxe.ExpectColumnValuesToBeUnique(column="sha256", row_condition=Column("sha256") != ""),
            SHA256_UNIQUE_CHECK,
            "duplicate image bytes (sha256)",
        ),
        _check(
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]), "label_in_set", "label not in {0, 1}"
        ),
        _check(gxe.ExpectColumnValuesToBeUnique(column="id"), ID_UNIQUE_CHECK, "duplicate id"),
        _check(
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=config.min_side),
            "width_min",
            f"width below {config.min_side} px",
        ),
        _check(
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=config.min_side),
            "height_min",
            f"height below {config.min_side} px",
        ),
        _check(
            gxe.ExpectColumnValuesToBeBetween(column=MEGAPIXELS_COLUMN, max_value=config.max_megapixels),
            "megapixels_max",
            f"image larger than {config.max_megapixels:g} megapixels",
        ),
    ]
    if config.natix_consistency:
        expectations += [
            _check(
                gxe.ExpectColumnValuesToMatchRegex(
                    column="scene_description",
                    regex=r"\S",
                    row_condition=(Column("source") == "natix") & (Column("label") == 1),
                ),
                "natix_positive_described",
                "natix: label 1 but scene_description empty",
            ),
            _check(
                gxe.ExpectColumnValuesToNotMatchRegex(
                    column="scene_description",
                    regex=r"\S",
                    row_condition=(Column("source") == "natix") & (Column("label") == 0),
                ),
                "natix_negative_undescribed",
                "natix: label 0 but scene_description set",
            ),
        ]
    expectations += [
        _check(gxe.ExpectColumnValuesToNotBeNull(column=column), f"{column}_not_null", f"{column} is null")
        for column in MANIFEST_COLUMNS
    ]
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _run_suite(frame: pd.DataFrame, config: ValidationConfig) -> list[ExpectationValidationResult]:
    """Validate ``frame`` (plus a derived megapixels column) and return the results in suite order."""
    context = gx.get_context(mode="ephemeral")
    suite = _build_suite(config)
    view = frame.copy()
    if {"width", "height"} <= set(view.columns):
        width, height = (pd.to_numeric(view[column], errors="coerce") for column in ("width", "height"))
        view[MEGAPIXELS_COLUMN] = width * height / 1e6
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": view})
    )
    results = batch.validate(suite, result_format={"result_format": "COMPLETE"}).results
    order = [expectation.meta["check"] for expectation in suite.expectations]
    return sorted(results, key=lambda result: order.index(result.expectation_config.meta["check"]))


def _error_message(result: ExpectationValidationResult) -> str | None:
    messages = {info.get("exception_message") for info in _exception_infos(result) if info.get("raised_exception")}
    return "; ".join(sorted(str(message) for message in messages)) or None


def _exception_infos(result: ExpectationValidationResult) -> list[dict]:
    info = result.exception_info or {}
    if "raised_exception" in info:
        return [info]
    return [value for value in info.values() if isinstance(value, dict)]


def _outcome(result: ExpectationValidationResult) -> ExpectationOutcome:
    details = result.result or {}
    observed = details.get("observed_value")
    name = result.expectation_config.meta["check"]
    return ExpectationOutcome(
        name=name,
        description=result.expectation_config.description,
        row_level=name not in DATASET_CHECKS,
        success=bool(result.success),
        unexpected_count=details.get("unexpected_count"),
        observed_value=None
        if observed is None
        else f"{observed:.4g}"
        if isinstance(observed, float)
        else str(observed),
        error=_error_message(result),
    )


def _keep_first(frame: pd.DataFrame, rows: list[int], column: str, describe: Callable[[int], str]) -> dict[int, str]:
    """Reasons for every flagged duplicate except the first of its group (which is kept)."""
    reasons: dict[int, str] = {}
    first_of: dict[object, int] = {}
    for row in sorted(rows):
        value = frame.at[row, column]
        if value in first_of:
            reasons[row] = describe(first_of[value])
        else:
            first_of[value] = row
    return reasons


def _row_reasons(frame: pd.DataFrame, results: list[ExpectationValidationResult]) -> dict[int, list[tuple[str, str]]]:
    """Map each flagged row position to its (check name, reason) pairs, in suite order."""
    reasons: dict[int, list[tuple[str, str]]] = {}
    for result in results:
        rows = (result.result or {}).get("unexpected_index_list")
        if result.success or not rows:
            continue
        name = result.expectation_config.meta["check"]
        description = result.expectation_config.description
        if name == ID_UNIQUE_CHECK:
            row_reason = _keep_first(
                frame,
                rows,
                "id",
                lambda kept: f"{description}; the first row with it (row {kept}) is kept",  # noqa: B023 - called at once
            )
        elif name == SHA256_UNIQUE_CHECK:
            row_reason = _keep_first(
                frame,
                rows,
                "sha256",
                lambda kept: f"{description} of kept id {frame.at[kept, 'id']}",  # noqa: B023 - called at once
            )
        elif name == DECODABLE_CHECK:
            row_reason = {row: f"{description}: {frame.at[row, 'decode_error']}" for row in rows}
        elif name == INGEST_ERROR_CHECK:
            row_reason = {row: f"{description}: {json.loads(frame.at[row, 'extras'])['ingest_error']}" for row in rows}
        else:
            row_reason = {row: description for row in rows}
        for row, reason in row_reason.items():
            reasons.setdefault(row, []).append((name, reason))
    return reasons


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_html(report: ValidationReport, quarantine: pd.DataFrame, sample_rows: int) -> str:
    """A self-contained HTML page: GE's Data Docs renderer pulls its CSS/JS from CDNs, unusable offline."""
    status = "CRITICAL" if report.critical_failure else "OK"
    colour = "#b00020" if report.critical_failure else "#1b5e20"
    summary = _table(
        ["ingested", "valid", "quarantined", "failure rate", "bound"],
        [
            [
                report.n_ingested,
                report.n_valid,
                report.n_quarantined,
                f"{report.failure_rate:.2%}",
                f"{report.max_failure_rate:.0%}",
            ]
        ],
    )
    expectations = _table(
        ["check", "flags", "result", "unexpected rows", "observed", "error"],
        [
            [
                outcome.name,
                outcome.description,
                "pass" if outcome.success else "FAIL",
                "" if outcome.unexpected_count is None else outcome.unexpected_count,
                _shorten(outcome.observed_value or ""),
                outcome.error or "",
            ]
            for outcome in sorted(report.expectations, key=lambda outcome: outcome.success)
        ],
    )
    reasons = _table(["check", "quarantined rows"], [[name, count] for name, count in report.reason_counts.items()])
    shown = [
        column
        for column in ("id", "source", "uri", "label", "width", "height", "reason")
        if column in quarantine.columns
    ]
    sample = _table(shown, quarantine[shown].head(sample_rows).values.tolist())
    critical = "".join(f"<li>{html.escape(reason)}</li>" for reason in report.critical_reasons)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Manifest validation</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 0.9em; vertical-align: top; }}
th {{ background: #f0f0f0; }}
tr:nth-child(even) td {{ background: #fafafa; }}
.status {{ color: {colour}; font-weight: bold; }}
</style></head><body>
<h1>Manifest validation: <span class="status">{status}</span></h1>
<ul>{critical}</ul>
{summary}
<h2>Expectations (Great Expectations; failures first)</h2>
{expectations}
<h2>Quarantine reasons</h2>
{reasons}
<h2>Quarantined rows (first {min(sample_rows, len(quarantine))} of {len(quarantine)})</h2>
{sample}
</body></html>
"""


def _critical_reasons(
    outcomes: list[ExpectationOutcome], missing: list[str], failure_rate: float, config: ValidationConfig
) -> list[str]:
    reasons = []
    if missing:
        reasons.append(
            f"manifest is missing columns {missing}; every source adapter must fill all of {list(MANIFEST_COLUMNS)}"
        )
    if any(outcome.name == NOT_EMPTY_CHECK and not outcome.success for outcome in outcomes):
        reasons.append("manifest is empty: check the ingest path and its logs")
    errored = [outcome.name for outcome in outcomes if outcome.error and not missing]
    if errored:
        reasons.append(
            f"expectations could not be evaluated: {errored} (see their error in the report; check column types)"
        )
    if failure_rate > config.max_failure_rate:
        reasons.append(f"failure rate {failure_rate:.2%} above the bound {config.max_failure_rate:.0%}")
    return reasons


def validate_manifest(manifest: pd.DataFrame, config: ValidationConfig) -> ValidationResult:
    """Run the manifest suite, quarantine failing rows with their reasons, and report.

    Invariant: ``len(manifest) == len(result.valid) + len(result.quarantine)``.

    Raises:
        DataValidationError: on a critical failure (columns missing, empty manifest, an expectation
            that could not run, or a failure rate above ``config.max_failure_rate``); its ``result``
            attribute holds the full result so callers can still keep the quarantine.
    """
    frame = manifest.reset_index(drop=True)
    results = _run_suite(frame, config)
    outcomes = [_outcome(result) for result in results]
    schema = next(result for result in results if result.expectation_config.meta["check"] == SCHEMA_CHECK)
    missing = sorted((schema.result.get("details") or {}).get("mismatched", {}).get("missing", []))

    if missing:
        row_reasons = {row: [(SCHEMA_CHECK, f"manifest is missing columns {missing}")] for row in range(len(frame))}
    else:
        row_reasons = _row_reasons(frame, results)
    flagged = sorted(row_reasons)
    quarantine = frame.loc[flagged].assign(
        reason=["; ".join(reason for _, reason in row_reasons[row]) for row in flagged]
    )
    valid = frame.drop(index=flagged)
    reason_counts = Counter(name for pairs in row_reasons.values() for name in dict(pairs))

    n_ingested = len(frame)
    failure_rate = len(quarantine) / n_ingested if n_ingested else 0.0
    critical_reasons = _critical_reasons(outcomes, missing, failure_rate, config)
    report = ValidationReport(
        n_ingested=n_ingested,
        n_valid=len(valid),
        n_quarantined=len(quarantine),
        failure_rate=failure_rate,
        max_failure_rate=config.max_failure_rate,
        missing_columns=missing,
        reason_counts=dict(reason_counts.most_common()),
        expectations=outcomes,
        critical_failure=bool(critical_reasons),
        critical_reasons=critical_reasons,
        html="",
    )
    quarantine = quarantine.reset_index(drop=True)
    report = report.model_copy(update={"html": render_html(report, quarantine, config.html_sample_rows)})
    result = ValidationResult(valid=valid.reset_index(drop=True), quarantine=quarantine, report=report)
    logger.info(
        "validated %d manifest rows: %d valid, %d quarantined (%.2f%%)",
        n_ingested,
        report.n_valid,
        report.n_quarantined,
        100 * failure_rate,
    )
    failed_dataset_checks = [o.name for o in outcomes if not o.success and not o.row_level]
    if failed_dataset_checks:
        logger.warning("dataset-level checks failed: %s", failed_dataset_checks)
    if report.critical_failure:
        top = ", ".join(f"{name}: {count}" for name, count in reason_counts.most_common(5)) or "none"
        raise DataValidationError(
            f"manifest validation failed critically: {'; '.join(critical_reasons)}. "
            f"{report.n_quarantined} of {n_ingested} rows quarantined (rate {failure_rate:.2%}, bound "
            f"{config.max_failure_rate:.0%}); top reasons: {top}. Fix the source data or the adapter that produced "
            "these rows (the quarantine with per-row reasons is on the exception's `result`), or loosen "
            "ValidationConfig if the bounds are wrong for this dataset.",
            result,
        )
    return result


def raise_on_critical_failure(report: ValidationReport) -> None:
    """Stop a run whose data failed validation critically (after its quarantine has been stored).

    Raises:
        DataValidationError: with the counts, the reasons and what to do.
    """
    if report.critical_failure:
        raise DataValidationError(
            f"data validation failed critically ({report.n_quarantined} of {report.n_ingested} rows quarantined): "
            f"{'; '.join(report.critical_reasons)}. Inspect the quarantine artifact, "
            "fix the data or the bounds in ValidationConfig, and run again.",
            result=None,
        )
