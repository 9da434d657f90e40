"""Bench reports: the JSON (the record), a Markdown summary a person reads at a glance, and PNGs.

Everything here renders from the JSON report alone, so `dermmobile bench --merge` can
re-render a report after adding phone rows without measuring anything again.
Files in the output folder:
  bench.json                 the report (schema in README.md)
  bench.md                   accuracy/parity table, latency table, failures, flips
  accuracy-latency.png       top-1 vs p50 latency, one point per artifact and thread count
  confusions/<artifact>.png  the reference's confusion matrix beside each artifact's
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermmobile.display import printable
from dermmobile.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_output_dir

MAX_FLIPS_SHOWN = 10


def write_reports(report: dict, out: Path) -> list[Path]:
    """Write all report files atomically; PNGs are skipped (and said so) when matplotlib is missing."""
    out = ensure_output_dir(Path(out), "bench report folder")
    written = [out / "bench.json", out / "bench.md"]
    try:
        import matplotlib  # noqa: F401  (a phone-side install may lack it; the numbers matter more)
    except ImportError:
        report.setdefault("notes", []).append("PNG plots not written: matplotlib is not installed")
    else:
        written += plot_accuracy_latency(report, out / "accuracy-latency.png")
        written += plot_confusion_pairs(report, out / "confusions")
    atomic_write_json(written[0], report)
    atomic_write_text(written[1], printable(markdown(report)))  # names come from files: no terminal escapes
    return written


def _f(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def _status(entry: dict, width: int) -> str:
    error = entry.get("error")
    if not error:
        return entry["status"]
    return error[:width] if error.startswith("not run") else f"{entry['status']}: {error[:width]}"


def _float_layers(entry: dict) -> str:
    """int8 artifacts: how many layers the accuracy-aware fallback left in float, and their share of MACs."""
    layers = entry.get("float_layers")
    return "–" if layers is None else f"{len(layers)} ({_pct(entry.get('float_macs_share'))})"


def markdown(report: dict) -> str:
    machine, data, settings = report["machine"], report["data"], report["settings"]
    ref = report["reference"]
    gemm = ", ".join(f"{v:.1f} GFLOP/s at {t} thread(s)" for t, v in report["gemm_peak_gflops"].items() if v is not None)
    lines = [
        "# dermmobile bench",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine.get('memory_gb')} GB, {machine['os']}, "
        f"Python {machine['python']}, load average {machine.get('load_average_1_5_15min')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- data: {data['root']} ({data['split']}: {data.get('note', '')}), {data.get('images')} images, "
        f"{len(data.get('classes', []))} classes, {len(data.get('bad_files', []))} undecodable",
        f"- reference: {ref['name']} ({ref['note']}); model FLOPs per image: {_f(ref.get('flops'), '.3g')}",
        f"- timing: batch 1, {settings['warmup']} warm-up then {settings['iters']} timed calls per row; "
        f"threads {settings['threads']}; fp32 GEMM peak (numpy, same run): {gemm or 'n/a'}",
        f"- created {report['created']}" + (f", took {report['seconds']} s" if "seconds" in report else ""),
        "",
        "## Accuracy and parity (against the reference, on the labeled set)",
        "",
        "| artifact | format | quant | status | top-1 | Δ top-1 (pts) | agreement | flips | max abs logit | "
        "mean abs logit | min cosine | confusion drift (L1) | MB | float layers (MACs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["artifacts"]:
        p = a.get("parity") or {}
        status = _status(a, 120)
        lines.append(
            f"| {a['name']} | {a['format']} | {a['quantization']} | {status} | {_pct(p.get('accuracy'))} | "
            f"{_f(p.get('accuracy_drop_points'))} | {_pct(p.get('agreement'))} | {len(p.get('flips', [])) if p else '–'} | "
            f"{_f(p.get('max_abs_logit'), '.2e')} | {_f(p.get('mean_abs_logit'), '.2e')} | {_f(p.get('min_cosine'), '.6f')} | "
            f"{p.get('confusion_drift_l1', '–')} | {_f(a.get('bytes'), '.2f', 1 / 2**20)} | {_float_layers(a)} |"
        )
    lines += [
        "",
        "## Latency (ms, single image)",
        "",
        "| artifact | source | device | threads | status | load | first | p50 | p90 | p99 | mean ± std | end-to-end p50 | "
        "peak RSS MB | GFLOP/s | % of GEMM peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lat = r.get("latency_ms") or {}
        e2e = r.get("end_to_end_ms") or {}
        status = _status(r, 80)
        lines.append(
            f"| {r['artifact']} | {r['source']} | {r['device']} | {r['threads']} | {status} | {_f(r.get('load_ms'), '.1f')} | "
            f"{_f(r.get('first_inference_ms'), '.1f')} | {_f(lat.get('p50'))} | {_f(lat.get('p90'))} | {_f(lat.get('p99'))} | "
            f"{_f(lat.get('mean'))} ± {_f(lat.get('std'))} | {_f(e2e.get('p50'))} | {_f(r.get('peak_rss_mb'), '.0f')} | "
            f"{_f(r.get('gflops_per_s'), '.1f')} | {_f(r.get('peak_fraction'), '.1%')} |"
        )
    lines += _end_to_end_table(report["rows"])
    if report.get("problems"):
        lines += ["", "## Gate failures and errors", ""] + [f"- {p}" for p in report["problems"]]
    flipped = [a for a in report["artifacts"] if (a.get("parity") or {}).get("flips")]
    if flipped:
        lines += ["", "## Flips (image: reference class → artifact class)", ""]
        for a in flipped:
            flips = a["parity"]["flips"]
            shown = "; ".join(f"{f['image']}: {f['reference']} → {f['artifact']}" for f in flips[:MAX_FLIPS_SHOWN])
            more = f" (+{len(flips) - MAX_FLIPS_SHOWN} more in bench.json)" if len(flips) > MAX_FLIPS_SHOWN else ""
            lines.append(f"- **{a['name']}** ({len(flips)}): {shown}{more}")
    lines += [
        "",
        "Notes: top-1 per class, confusion matrices and every flip are in bench.json. Peak RSS is the peak of the "
        "process that ran the row (imports and runtime included; `rss_before_load_mb` in the JSON is the share before "
        "the model was loaded). GFLOP/s uses the fp32 model's FLOPs, so int8 rows can exceed the fp32 GEMM peak. "
        "Rows from other devices were merged from their own files and timed there.",
        "",
    ]
    return "\n".join(lines)


E2E_SOURCES = {"images": "data-set photos", "phone_12mp": "12 MP phone JPEG"}


def _end_to_end_table(rows: list[dict]) -> list[str]:
    """Per row and photo source: p50 of each step a person waits for, and the total over inference p50."""
    lines = []
    for r in rows:
        for source, e2e in (r.get("end_to_end") or {}).items():
            if not lines:
                lines = [
                    "",
                    "## End to end (ms, p50 per file: decode + preprocess + inference)",
                    "",
                    "| artifact | threads | photos | files | decode | preprocess | inference | total | total / inference p50 |",
                    "|---|---|---|---|---|---|---|---|---|",
                ]
            steps = [_f(e2e[f"{step}_ms"]["p50"]) for step in ("decode", "preprocess", "inference", "total")]
            ratio = e2e.get("total_over_inference_p50")
            lines.append(
                f"| {r['artifact']} | {r['threads']} | {E2E_SOURCES.get(source, source)} | {e2e['files']} | "
                f"{' | '.join(steps)} | {'–' if ratio is None else f'{ratio:.1f}x'} |"
            )
    return lines


def plot_accuracy_latency(report: dict, path: Path) -> list[Path]:
    """Top-1 against p50 latency; phone rows use the host's accuracy of the same artifact name."""
    accuracy = {a["name"]: (a.get("parity") or {}).get("accuracy") for a in report["artifacts"]}
    points = []
    for r in report["rows"]:
        p50 = (r.get("latency_ms") or {}).get("p50")
        acc = accuracy.get(r["artifact"])
        if p50 is not None and acc is not None:
            points.append((p50, acc, r))
    if not points:
        return []
    from dermmobile.display import figure_png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    groups = sorted({(r["source"], r["threads"]) for _, _, r in points})
    markers = "osD^v<>P*X"
    for i, group in enumerate(groups):
        chosen = [(x, y, r) for x, y, r in points if (r["source"], r["threads"]) == group]
        ax.scatter(
            [x for x, _, _ in chosen],
            [y * 100 for _, y, _ in chosen],
            marker=markers[i % len(markers)],
            label=f"{group[0]}, {group[1]} thread(s)",
        )
        for x, y, r in chosen:
            ax.annotate(r["artifact"], (x, y * 100), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per image, ms (log scale)")
    ax.set_ylabel("top-1 accuracy on the labeled set, %")
    ax.set_title(f"accuracy vs latency ({report['data'].get('images')} images, {report['machine']['cpu']})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        png = figure_png(fig)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png)
    return [path]


def plot_confusion_pairs(report: dict, folder: Path) -> list[Path]:
    """One PNG per artifact: the reference's confusion matrix beside the artifact's (metrics.plot_confusions)."""
    from dermmobile.metrics import plot_confusions

    labels = report["data"].get("classes") or []
    reference = next((a for a in report["artifacts"] if a["role"] == "reference" and a.get("parity")), None)
    if reference is None:
        return []
    ref_matrix = np.asarray(reference["parity"]["confusion"])
    written = []
    for a in report["artifacts"]:
        if a is reference or not a.get("parity"):
            continue
        path = Path(folder) / f"{a['name']}.png"
        plot_confusions(
            [ref_matrix, np.asarray(a["parity"]["confusion"])],
            [reference["name"], a["name"]],
            labels,
            path,
            suptitle=f"{a['name']}: drift L1 {a['parity']['confusion_drift_l1']}",
        )
        written.append(path)
    return written
