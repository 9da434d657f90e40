"""Markdown tables for people (bench.md, benchmark results, README sections): one set of rules, via tabulate.

`markdown_table` is `tabulate(rows, headers, tablefmt="github")` with two rules of ours:
cells are kept exactly as the caller formatted them (tabulate would otherwise re-read
"1.50" as a number and print "1.5"), and a `|` or line break inside a cell (artifact and
class names come from files) is escaped so it cannot split a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(rows: Iterable[Sequence[object]], headers: Sequence[object]) -> str:
    """A GitHub-flavoured Markdown table; None cells are empty."""
    from tabulate import tabulate

    cells = [[_cell(value) for value in row] for row in rows]
    return tabulate(cells, [_cell(h) for h in headers], tablefmt="github", disable_numparse=True)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split("\n")).replace("|", "\\|")
