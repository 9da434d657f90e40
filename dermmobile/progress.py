"""Progress bars for long work, quiet when not attached to a terminal or when desc is None."""

from __future__ import annotations


def progress_bar(iterable, desc: str | None = None, total: int | None = None, unit: str = "it"):
    if desc is None:
        return iterable
    from tqdm import tqdm

    from dermmobile.chatter import terminal

    stream = terminal()  # ours stay on the terminal while converters write to their log
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=not stream.isatty(), dynamic_ncols=True,
                file=stream)  # fmt: skip
