"""Regenerate README.md's results section from benchmarks/results/ (never typed by hand).

    .venv/bin/python benchmarks/readme_tables.py

Reads the newest full (non-quick) paper-protocol, export-matrix (with its bench report)
and scaling results and rewrites the block between `<!-- results:start -->` and
`<!-- results:end -->`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dermmobile.tables import markdown_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"


def _newest(pattern: str, key: str | None = None) -> Path | None:
    """The newest full result matching `pattern`; with `key`, only JSON reports that have it (an export-matrix
    report with its bench, not the exports of a rerun saved beside it)."""
    files = [p for p in RESULTS.glob(pattern) if "-quick" not in p.name]
    if key is not None:
        files = [p for p in files if key in json.loads(p.read_text())]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "–"


def _ms(value) -> str:
    return f"{value:.1f} ms" if isinstance(value, (int, float)) else "–"


def training_section(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    paper = {"head-only": "68 %", "full": "77–84 %", "head-only 5-fold": "5-fold CV"}
    cells = []
    for row in report["runs"]:
        if "error" in row:
            cells.append([row["recipe"], row["arch"], f"not run: {row['error']}", "", "", "", "", ""])
        elif "val_accuracy_mean" in row:
            val = f"{row['val_accuracy_mean']:.1%} ± {row['val_accuracy_std']:.1%}"
            cells.append([row["recipe"], row["arch"], "–", val, row["settings"]["epochs"],
                          f"{row['wall_time_s']:.0f} s (all folds)", "–", paper.get(row["recipe"], "")])  # fmt: skip
        else:
            cells.append([row["recipe"], row["arch"], f"**{_pct(row['test_accuracy'])}**", _pct(row["val_accuracy"]),
                          row["epochs_run"], f"{row['train_time_s']:.0f} s", f"{row['train_img_per_s']:.1f}",
                          paper.get(row["recipe"], "")])  # fmt: skip
    headers = ["recipe", "arch", "held-out test top-1", "validation top-1", "epochs", "train time", "train img/s",
               "the paper (9 classes)"]  # fmt: skip
    return [f"### Fine-tuning ([{path.name}](benchmarks/results/{path.name}))", "", markdown_table(cells, headers)]


def _link(path: Path) -> str:
    relative = path.relative_to(HERE.parent).as_posix()
    return f"[{relative.removeprefix('benchmarks/results/')}]({relative})"


def export_section(path: Path, title: str = "Export matrix") -> list[str]:
    report = json.loads(path.read_text())
    bench_path = path.parent / report["bench"]
    bench = json.loads(bench_path.read_text())
    artifacts = {a["name"]: a for a in bench["artifacts"]}
    threads = sorted({row["threads"] for row in bench["rows"] if row.get("threads")})
    p50 = {(row["artifact"], row["threads"]): (row.get("latency_ms") or {}).get("p50") for row in bench["rows"]}
    cells = []
    for name in ("pytorch-eager", "pytorch-compile"):
        if name in artifacts:
            top1 = _pct((artifacts[name].get("parity") or {}).get("accuracy"))
            cells.append([f"{name} (reference)", "–", "–", "–", top1, *(_ms(p50.get((name, t))) for t in threads), "–"])
    for row in report["exports"]:
        name = row["file"] or f"{row['target']}-{row['quantization']}"
        agreement = (
            f"{_pct(row['agreement'])} ({row['flips']} of {row['parity_images']})" if row["agreement"] is not None else "not run"
        )
        size = f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] else "–"
        top1 = _pct((artifacts.get(name, {}).get("parity") or {}).get("accuracy"))
        gate = "not run (needs macOS)" if row["status"] == "not-run" else row["status"]
        label = f"{row['target']} {row['quantization']}" + (f" {row['variant']}" if row.get("variant") else "")
        if row.get("float_macs_share"):
            label += f" ({len(row['float_layers'])} layers, {row['float_macs_share']:.1%} of MACs float)"
        cells.append([label, size, f"{row['seconds']:.0f} s", agreement, top1, *(_ms(p50.get((name, t))) for t in threads), gate])
    headers = ["artifact", "size", "export", "agreement at export (flips)", "test top-1", *(f"p50 @{t} thr" for t in threads),
               "gate"]  # fmt: skip
    gated = any(row.get("images") for row in report["exports"])  # the three int8 image sets (bias correction, fallback)
    how = (
        f"int8: calibrated on {report['calib_count']} class-balanced photos, layers left float chosen on tuning photos, "
        "agreement at export on the gate photos (disjoint from both; `plain`: no fallback). fp32/fp16: the held-out "
        "split. Top-1 and latency: bench on the held-out test split, in one run."
        if gated
        else f"int8 calibrated on {report['calib_count']} class-balanced photos, before bias correction and the fallback "
        "(see the int8 table below for today's default). Agreement at export: on every other photo (int8) or the "
        "held-out split (fp32/fp16). Top-1 and latency: bench on the held-out test split."
    )
    load = report.get("bench_machine", report["machine"]).get("load_average_1_5_15min")
    lines = [f"### {title} ({_link(path)}, bench: {_link(bench_path)})", "", how, "",
             f"CPU: {report['machine'].get('cpu')}; load average when the bench started: {load}.", "",
             markdown_table(cells, headers)]  # fmt: skip
    if report.get("latency"):
        latency = [[key, _ms(v["p50_ms"]), _ms(v["plain_int8_p50_ms"]), _ratio(v["fallback_cost"]), _ms(v["eager_p50_ms"]),
                    _ratio(v["vs_eager"])] for key, v in report["latency"].items()]  # fmt: skip
        headers = ["int8 artifact @ threads", "p50", "plain int8 p50", "fallback cost", "PyTorch eager p50", "vs eager"]
        lines += ["", markdown_table(latency, headers)]
    return lines


def _ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "–"


def scaling_section(path: Path) -> list[str]:
    # The table as scaling.py wrote it (markdown_table there): copied, not re-typed.
    table = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return [f"### Scaling ([{path.name}](benchmarks/results/{path.name}), random weights: latency and size only)", "", *table]


def main() -> int:
    sections: list[str] = []
    for pattern, key, render in (("paper-protocol-*.json", None, training_section),
                                 ("export-matrix-*.json", "bench", export_section)):  # fmt: skip
        path = _newest(pattern, key)
        if path:
            sections += [*render(path), ""]
    int8 = _newest("int8-fallback/export-matrix-*.json", "bench")
    if int8:
        sections += [*export_section(int8, "int8 by default: GPTQ rounding, bias correction and the fallback, every target"), ""]
    scaling = _newest("scaling-*.md")
    if scaling:
        sections += [*scaling_section(scaling), ""]
    text = README.read_text()
    block = "<!-- results:start -->\n" + "\n".join(sections).strip() + "\n<!-- results:end -->"
    README.write_text(re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda _: block, text, flags=re.S))
    print(f"rewrote the results section of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
