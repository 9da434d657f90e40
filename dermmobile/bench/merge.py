"""Rows measured elsewhere (a phone's benchmark screen, a Raspberry Pi) merged into a bench report.

The row schema is in README.md beside this file; the Android app writes the same rows.
A row is checked field by field and refused with a message naming the row and the field,
so a half-written phone export never slips into a results table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dermmobile.errors import BadInputError

ROWS_SCHEMA = "dermmobile-bench-rows"
REQUIRED_STATS = ("p50", "p90", "p99", "mean", "std")
# Optional fields a phone may send; anything else is kept as is for forward compatibility.
OPTIONAL_NUMBERS = ("load_ms", "first_inference_ms", "peak_rss_mb", "file_bytes", "warmup")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_row(row, where: str) -> dict:
    """Validate one external row; returns a copy with defaults filled in."""
    if not isinstance(row, dict):
        raise BadInputError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for key in ("source", "device", "artifact", "format", "quantization"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise BadInputError(f"{where}: field {key!r} must be a non-empty string, got {row.get(key)!r}")
    threads = row.get("threads")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise BadInputError(f"{where}: field 'threads' must be a positive integer, got {threads!r}")
    iterations = row.get("iterations")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise BadInputError(f"{where}: field 'iterations' must be a positive integer, got {iterations!r}")
    stats = row.get("latency_ms")
    if not isinstance(stats, dict):
        raise BadInputError(f"{where}: field 'latency_ms' must be an object with {', '.join(REQUIRED_STATS)}")
    for key in REQUIRED_STATS:
        if not _number(stats.get(key)):
            raise BadInputError(f"{where}: latency_ms.{key} must be a finite number >= 0 (milliseconds), got {stats.get(key)!r}")
    if not stats["p50"] <= stats["p90"] <= stats["p99"]:
        raise BadInputError(f"{where}: latency_ms percentiles must satisfy p50 <= p90 <= p99, got {stats}")
    for key in OPTIONAL_NUMBERS:
        if row.get(key) is not None and not _number(row[key]):
            raise BadInputError(f"{where}: field {key!r} must be a finite number >= 0 or absent, got {row[key]!r}")
    out = dict(row)
    out.setdefault("status", "ok")
    out.setdefault("error", None)
    return out


def read_rows(path: Path) -> list[dict]:
    """Rows from a file: a JSON list of rows, or an object with a "rows" list (rows file or bench report)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"--merge file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"--merge file {path} is not valid JSON ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise BadInputError(f"{path}: expected a non-empty list of rows, or an object with a 'rows' list (schema {ROWS_SCHEMA})")
    checked = [check_row(row, f"{path} row {i}") for i, row in enumerate(rows)]
    for row in checked:
        row.setdefault("merged_from", path.name)
    return checked


def _key(row: dict) -> tuple:
    return (row.get("source"), row.get("device"), row.get("artifact"), row.get("threads"))


def merge_rows(report: dict, rows: list[dict]) -> dict:
    """Add rows to a report; a row for the same source, device, artifact and thread count replaces the old one."""
    new_keys = {_key(row) for row in rows}
    report["rows"] = [row for row in report.get("rows", []) if _key(row) not in new_keys] + rows
    return report


def read_report(path: Path) -> dict:
    from dermmobile.bench.rows import SCHEMA

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(
            f"no bench report at {path} to merge into; run `dermmobile bench --artifacts ... --data ...` first "
            "or pass --out pointing at an existing report folder"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise BadInputError(f"{path} is not a dermmobile bench report (schema {SCHEMA!r})")
    return report
