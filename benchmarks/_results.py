"""The one way a benchmark script saves its result: a JSON report and its Markdown table.

Both files are written atomically (a half-written result never replaces a good one) and
share a stem named after the setup, so `benchmarks/results/` reads like timm's results.
"""

from __future__ import annotations

from pathlib import Path

from dermmobile.fsutil import atomic_write_json, atomic_write_text


def write_result(out_dir: Path, stem: str, report: dict, markdown: str) -> tuple[Path, Path]:
    """Write `out_dir/stem.json` and `out_dir/stem.md`; return both paths."""
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, markdown)
    return json_path, md_path


def machine_tag() -> str:
    """How every result stem ends ("x86_64-2core"): one machine's results never overwrite another's. Built from the
    machine record every result carries (bench.sweep.machine_info), so the stem and the record always agree."""
    # Imported here, not at the top: bench.sweep loads numpy, and importing this module stays stdlib and
    # dermmobile.fsutil only, as end_to_end.py and harness_overhead.py say where they import it.
    from dermmobile.bench.sweep import machine_info

    machine = machine_info()
    return f"{machine['arch']}-{machine['cores']}core"
