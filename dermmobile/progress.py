"""Progress bars for long work, quiet when not attached to a terminal or when desc is None."""

from __future__ import annotations

import sys


def progress_bar(iterable, desc: str | None = None, total: int | None = None, unit: str = "it"):
    if desc is None:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)
