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

from stage1_core.common.cli import Finding
from stage1_core.common.config import StrictConfig
from stage1_core.common.manifest import MANIFEST_COLUMNS
from stage1_core.common.reports import Report
from stage1_core.data.sources.base import UNREADABLE_FILE
from stage1_core.data.splits import near_duplicate_clusters

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
LABEL_CONFLICT_CHECK = "label_conflict"
LABEL_CONFLICT_COLUMN = "label_conflict_group"  # derived for the label-conflict check only; never part of the output
DATASET_CHECKS = frozenset({SCHEMA_CHECK, NOT_EMPTY_CHECK, CLASS_BALANCE_CHECK})


class ValidationConfig(StrictConfig):
    """Bounds of the manifest suite; defaults fit NATIX (about 80-90% positives, multi-megapixel JPEGs)."""

    min_side: int = Field(64, ge=1, description="smallest accepted width and height, in pixels")
    max_megapixels: float = Field(50.0, gt=0, description="largest accepted width * height / 1e6")
    natix_consistency: bool = Field(True, description="NATIX rule: label 1 iff scene_description is non-empty")
    min_positive_rate: float = Field(
        0.05, ge=0, le=1, description="the floor of the class balance: fewer positives among valid rows is critical"
    )
    max_positive_rate: float = Field(
        0.95, ge=0, le=1, description="more positives among valid rows is critical (too few negatives)"
    )
    max_failure_rate: float = Field(0.2, ge=0, le=1, description="quarantined / ingested above this is critical")
    label_conflict_max_distance: int | None = Field(
        2,
        ge=0,
        le=64,
        description="pHash Hamming distance at or below which two images are copies of one photo (a re-encode, "
        "resize or re-upload of one frame); copies labelled both 0 and 1 are quarantined. Tighter than the split's "
        "near-duplicate groups (6), which keep look-alikes in one split: distinct street scenes, one with roadwork "
        "and one without, lie 4-6 bits apart (the fused demo data: 16 such pairs, none within 2). None: off",
    )
    max_label_conflict_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="rows in near-duplicate groups with conflicting labels / ingested above this is critical",
    )
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


class DataValidationError(Finding, ValueError):
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
            gxe.ExpectColumnValuesToBeInSet(column=LABEL_CONFLICT_COLUMN, value_set=[""]),
            LABEL_CONFLICT_CHECK,
            "near-duplicate images with conflicting labels",
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


def label_conflict_groups(frame: pd.DataFrame, max_distance: int | None) -> pd.Series:
    """Per row, its near-duplicate group when that group holds both labels (else ""), e.g.
    ``"3 copies of natix:train:17 (ids natix:train:17, natix:train:90, folder:x.jpg; labels 0 and 1)"``.

    Copies of one photo labelled 1 and 0 would both train (and, being one split group, land in one split)
    with no warning: one of the labels is wrong, and which one only a person can tell.
    """
    conflicts = pd.Series("", index=frame.index, dtype="string")
    if max_distance is None or not {"phash", "label", "id"} <= set(frame.columns):
        return conflicts
    labelled = frame[frame["label"].isin([0, 1])]
    clusters = pd.Series(near_duplicate_clusters(labelled["phash"], max_distance), index=labelled.index)
    for _, rows in labelled[clusters >= 0].groupby(clusters[clusters >= 0]):
        if rows["label"].nunique() < 2:
            continue
        ids = sorted(rows["id"].astype(str))
        listed = ", ".join(ids[:5]) + (f", ... ({len(ids) - 5} more)" if len(ids) > 5 else "")
        conflicts[rows.index] = f"{len(ids)} copies of {ids[0]} (ids {listed}; labels 0 and 1)"
    return conflicts


def _run_suite(
    frame: pd.DataFrame, config: ValidationConfig, conflicts: pd.Series
) -> list[ExpectationValidationResult]:
    """Validate ``frame`` (plus the derived megapixels and label-conflict columns); the results in suite order."""
    context = gx.get_context(mode="ephemeral")
    suite = _build_suite(config)
    view = frame.copy()
    if {"width", "height"} <= set(view.columns):
        width, height = (pd.to_numeric(view[column], errors="coerce") for column in ("width", "height"))
        view[MEGAPIXELS_COLUMN] = width * height / 1e6
    view[LABEL_CONFLICT_COLUMN] = conflicts
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


def _row_reasons(
    frame: pd.DataFrame, results: list[ExpectationValidationResult], conflicts: pd.Series
) -> dict[int, list[tuple[str, str]]]:
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
        elif name == LABEL_CONFLICT_CHECK:
            row_reason = {
                row: f"{description}: {conflicts[row]}; label them alike at the source and ingest again" for row in rows
            }
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


def _class_balance_problem(valid: pd.DataFrame, config: ValidationConfig) -> str | None:
    """Why the valid rows cannot train a classifier (a class missing or below the floor), or None."""
    if valid.empty or "label" not in valid.columns:
        return None
    positives, negatives = int((valid["label"] == 1).sum()), int((valid["label"] == 0).sum())
    rate = positives / (positives + negatives) if positives + negatives else 0.0
    if negatives and positives and config.min_positive_rate <= rate <= config.max_positive_rate:
        return None
    return (
        f"class balance: the valid rows hold {positives} labelled 1 and {negatives} labelled 0 (positive rate "
        f"{rate:.1%}, bounds [{config.min_positive_rate:.0%}, {config.max_positive_rate:.0%}], "
        "ValidationConfig.min_positive_rate / max_positive_rate): add images of the rarer class, or change the bounds"
    )


def unreadable_files(frame: pd.DataFrame) -> list[str]:
    """The source files (shards, annotation files) that could not be read, as ingest marked their rows."""
    if "extras" not in frame.columns:
        return []
    marked = frame["extras"].astype(str).str.extract(rf'"{UNREADABLE_FILE}"\s*:\s*"([^"]*)"')[0].dropna()
    return sorted(set(marked))


def _critical_reasons(
    outcomes: list[ExpectationOutcome],
    missing: list[str],
    failure_rate: float,
    frame: pd.DataFrame,
    valid: pd.DataFrame,
    conflict_rate: float,
    config: ValidationConfig,
) -> list[str]:
    reasons = []
    if files := unreadable_files(frame):
        reasons.append(
            f"{len(files)} source file(s) could not be read, so how many images they held is unknown (e.g. "
            f"{files[0]}): re-download or re-export them, or remove them to go on without them"
        )
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
    if conflict_rate > config.max_label_conflict_rate:
        reasons.append(
            f"{conflict_rate:.2%} of the rows are near-duplicates with conflicting labels, above the bound "
            f"{config.max_label_conflict_rate:.0%} (ValidationConfig.max_label_conflict_rate): fix the labels at "
            "the source"
        )
    if not missing and (balance := _class_balance_problem(valid, config)) is not None:
        reasons.append(balance)
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
    conflicts = label_conflict_groups(frame, config.label_conflict_max_distance)
    results = _run_suite(frame, config, conflicts)
    outcomes = [_outcome(result) for result in results]
    schema = next(result for result in results if result.expectation_config.meta["check"] == SCHEMA_CHECK)
    missing = sorted((schema.result.get("details") or {}).get("mismatched", {}).get("missing", []))

    if missing:
        row_reasons = {row: [(SCHEMA_CHECK, f"manifest is missing columns {missing}")] for row in range(len(frame))}
    else:
        row_reasons = _row_reasons(frame, results, conflicts)
    flagged = sorted(row_reasons)
    quarantine = frame.loc[flagged].assign(
        reason=["; ".join(reason for _, reason in row_reasons[row]) for row in flagged]
    )
    valid = frame.drop(index=flagged)
    reason_counts = Counter(name for pairs in row_reasons.values() for name in dict(pairs))

    n_ingested = len(frame)
    failure_rate = len(quarantine) / n_ingested if n_ingested else 0.0
    conflict_rate = float((conflicts != "").mean()) if n_ingested else 0.0
    critical_reasons = _critical_reasons(outcomes, missing, failure_rate, frame, valid, conflict_rate, config)
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
