"""Rows measured elsewhere (a phone's benchmark screen, the web demo, a Raspberry Pi) merged into a bench report.

Every row is a `dermmobile.bench.schema.BenchRow` (published as JSON Schema for the
apps); a row that does not fit is refused with a message naming the row and the field,
so a half-written phone export never slips into a results table. Files are read through
`dermmobile.readers` (regular files only, bounded size and depth) and hold at most
MAX_ROWS rows, so a hostile file is refused in seconds.
"""

from __future__ import annotations

from pathlib import Path

from dermmobile.bench.schema import SCHEMA, BenchReport, BenchRow
from dermmobile.errors import BadInputError
from dermmobile.readers import MAX_MERGE_BYTES, MAX_REPORT_BYTES, read_json
from dermmobile.validation import validate

ROWS_SCHEMA = "dermmobile-bench-rows"
MAX_ROWS = 10_000  # a phone writes one row per artifact and thread count


def check_row(row, where: str) -> dict:
    """Validate one external row against the one row schema; returns it with status/error filled in."""
    if not isinstance(row, dict):
        raise BadInputError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    checked = validate(BenchRow, row, where)
    return checked.model_dump(exclude_unset=True) | {"status": checked.status, "error": checked.error}


def read_rows(path: Path) -> list[dict]:
    """Rows from a file: a JSON list of rows, or an object with a "rows" list (rows file or bench report)."""
    path = Path(path)
    data = read_json(path, "--merge file", MAX_MERGE_BYTES)
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise BadInputError(f"{path}: expected a non-empty list of rows, or an object with a 'rows' list (schema {ROWS_SCHEMA})")
    if len(rows) > MAX_ROWS:
        raise BadInputError(f"{path} holds {len(rows):,} rows; at most {MAX_ROWS:,} are merged from one file")
    checked = [check_row(row, f"{path} row {i}") for i, row in enumerate(rows)]
    for row in checked:
        row.setdefault("merged_from", path.name[:255])
    return checked


def _key(row: dict) -> tuple:
    return (row.get("source"), row.get("device"), row.get("artifact"), row.get("threads"))


def merge_rows(report: dict, rows: list[dict]) -> dict:
    """Add rows to a report; a row for the same source, device, artifact and thread count replaces the old one."""
    new_keys = {_key(row) for row in rows}
    report["rows"] = [row for row in report.get("rows", []) if _key(row) not in new_keys] + rows
    return report


def read_report(path: Path) -> dict:
    """A bench.json to merge into, checked so that rendering it again cannot fail on a wrong type."""
    path = Path(path)
    try:
        report = read_json(path, "bench report", MAX_REPORT_BYTES)
    except BadInputError as exc:
        if "does not exist" in str(exc):
            raise BadInputError(
                f"no bench report at {path} to merge into; run `dermmobile bench --artifacts ... --data ...` first "
                "or pass --out pointing at an existing report folder"
            ) from None
        raise
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise BadInputError(f"{path} is not a dermmobile bench report (schema {SCHEMA!r})")
    validate(BenchReport, report, f"{path} is not a usable bench report")
    return report
