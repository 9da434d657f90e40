"""Bench reports: the JSON (the record), a Markdown summary a person reads at a glance, and PNGs.

Everything here renders from the JSON report alone, so `dermmobile bench --merge` can
re-render a report after adding phone rows without measuring anything again.
Files in the output folder:
  bench.json                 the report (schema in README.md)
  bench.md                   accuracy/parity table, latency table, failures, flips
  accuracy-latency.png       top-1 vs p50 latency, one numbered point per row, colour = format,
                             marker = quantization, the Pareto front marked, a key naming every number
  confusions/<artifact>.png  the reference's confusion matrix beside each artifact's
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermmobile.display import figure_png, printable, pyplot
from dermmobile.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_output_dir
from dermmobile.tables import markdown_table

MAX_FLIPS_SHOWN = 10
PARITY_COLUMNS = ("artifact", "format", "quant", "status", "top-1", "Δ top-1 (pts)", "agreement", "flips", "max abs logit",
                  "mean abs logit", "min cosine", "confusion drift (L1)", "MB", "float layers (MACs)")  # fmt: skip
LATENCY_COLUMNS = ("artifact", "source", "device", "threads", "status", "load", "first", "p50", "p90", "p99", "mean ± std",
                   "end-to-end p50", "peak RSS MB", "GFLOP/s", "% of GEMM peak")  # fmt: skip


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
    lines = [
        "# dermmobile bench",
        "",
        *_header(report),
        "",
        "## Accuracy and parity (against the reference, on the labeled set)",
        "",
        markdown_table([_parity_cells(a) for a in report["artifacts"]], PARITY_COLUMNS),
        "",
        "## Latency (ms, single image)",
        "",
        markdown_table([_latency_cells(r) for r in report["rows"]], LATENCY_COLUMNS),
    ]
    lines += _end_to_end_table(report["rows"])
    if report.get("problems"):
        lines += ["", "## Gate failures and errors", ""] + [f"- {p}" for p in report["problems"]]
    lines += _flips(report["artifacts"])
    lines += [
        "",
        "Notes: top-1 per class, confusion matrices and every flip are in bench.json. Peak RSS is the peak of the "
        "process that ran the row (imports and runtime included; `rss_before_load_mb` in the JSON is the share before "
        "the model was loaded). GFLOP/s uses the fp32 model's FLOPs, so int8 rows can exceed the fp32 GEMM peak. "
        "Rows from other devices were merged from their own files and timed there.",
        "",
    ]
    return "\n".join(lines)


def _header(report: dict) -> list[str]:
    machine, data, settings, ref = report["machine"], report["data"], report["settings"], report["reference"]
    return [
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine.get('memory_gb')} GB, {machine['os']}, "
        f"Python {machine['python']}, load average {machine.get('load_average_1_5_15min')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- data: {data['root']} ({data['split']}: {data.get('note', '')}), {data.get('images')} images, "
        f"{len(data.get('classes', []))} classes, {len(data.get('bad_files', []))} undecodable",
        f"- reference: {ref['name']} ({ref['note']}); model FLOPs per image: {_f(ref.get('flops'), '.3g')}",
        f"- timing: batch 1, {settings['warmup']} warm-up then {settings['iters']} timed calls per row; "
        f"threads {settings['threads']}",
        f"- fp32 GEMM peak (the fastest GEMM in the process, same run): {_gemm(report) or 'n/a'}",
        f"- created {report['created']}" + (f", took {report['seconds']} s" if "seconds" in report else ""),
    ]


def _gemm(report: dict) -> str:
    """Peak per thread count with the library that reached it and what the others reached."""
    libraries = report.get("gemm_peak_library") or {}  # absent in reports written before it was recorded (numpy's)
    candidates = report.get("gemm_candidates_gflops") or {}
    parts = []
    for threads, peak in report["gemm_peak_gflops"].items():
        if peak is None:
            continue
        source = libraries.get(threads) or "numpy"
        others = [f"{name} {value:.1f}" for name, value in (candidates.get(threads) or {}).items() if name != source]
        parts.append(f"{peak:.1f} GFLOP/s at {threads} thread(s) by {source}" + (f" ({'; '.join(others)})" if others else ""))
    return ", ".join(parts)


def _parity_cells(a: dict) -> list:
    p = a.get("parity") or {}
    return [
        a["name"], a["format"], a["quantization"], _status(a, 120), _pct(p.get("accuracy")),
        _f(p.get("accuracy_drop_points")), _pct(p.get("agreement")), len(p.get("flips", [])) if p else "–",
        _f(p.get("max_abs_logit"), ".2e"), _f(p.get("mean_abs_logit"), ".2e"), _f(p.get("min_cosine"), ".6f"),
        p.get("confusion_drift_l1", "–"), _f(a.get("bytes"), ".2f", 1 / 2**20), _float_layers(a),
    ]  # fmt: skip


def _latency_cells(r: dict) -> list:
    lat = r.get("latency_ms") or {}
    e2e = r.get("end_to_end_ms") or {}
    return [
        r["artifact"], r["source"], r["device"], r["threads"], _status(r, 80), _f(r.get("load_ms"), ".1f"),
        _f(r.get("first_inference_ms"), ".1f"), _f(lat.get("p50")), _f(lat.get("p90")), _f(lat.get("p99")),
        f"{_f(lat.get('mean'))} ± {_f(lat.get('std'))}", _f(e2e.get("p50")), _f(r.get("peak_rss_mb"), ".0f"),
        _f(r.get("gflops_per_s"), ".1f"), _f(r.get("peak_fraction"), ".1%"),
    ]  # fmt: skip


def _flips(artifacts: list[dict]) -> list[str]:
    flipped = [a for a in artifacts if (a.get("parity") or {}).get("flips")]
    if not flipped:
        return []
    lines = ["", "## Flips (image: reference class → artifact class)", ""]
    for a in flipped:
        flips = a["parity"]["flips"]
        shown = "; ".join(f"{f['image']}: {f['reference']} → {f['artifact']}" for f in flips[:MAX_FLIPS_SHOWN])
        more = f" (+{len(flips) - MAX_FLIPS_SHOWN} more in bench.json)" if len(flips) > MAX_FLIPS_SHOWN else ""
        lines.append(f"- **{a['name']}** ({len(flips)}): {shown}{more}")
    return lines


E2E_SOURCES = {"images": "data-set photos", "phone_12mp": "12 MP phone JPEG"}


def _end_to_end_table(rows: list[dict]) -> list[str]:
    """Per row and photo source: p50 of each step a person waits for, and the total over inference p50."""
    cells = []
    for r in rows:
        for source, e2e in (r.get("end_to_end") or {}).items():
            steps = [_f(e2e[f"{step}_ms"]["p50"]) for step in ("decode", "preprocess", "inference", "total")]
            ratio = e2e.get("total_over_inference_p50")
            cells.append([r["artifact"], r["threads"], E2E_SOURCES.get(source, source), e2e["files"], *steps,
                          "–" if ratio is None else f"{ratio:.1f}x"])  # fmt: skip
    if not cells:
        return []
    headers = ["artifact", "threads", "photos", "files", "decode", "preprocess", "inference", "total", "total / inference p50"]
    return ["", "## End to end (ms, p50 per file: decode + preprocess + inference)", "", markdown_table(cells, headers)]


def plain_label(text: object, width: int = 60) -> str:
    """Untrusted text as a plot label: control characters shown as escapes, at most `width` characters."""
    shown = printable(text, keep_newlines=False)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


@dataclass
class _Point:
    latency_ms: float
    accuracy: float  # percent
    row: dict

    @property
    def format(self) -> str:
        return str(self.row.get("format"))

    @property
    def quantization(self) -> str:
        return str(self.row.get("quantization"))


# One colour per format (the export formats first, in a fixed order, so a format keeps its colour across
# reports), one marker per quantization.
FORMAT_ORDER = ("pytorch", "torchscript", "onnx", "tflite", "executorch", "coreml")
QUANT_MARKERS = {"none": "o", "fp16": "s", "int8-dynamic": "^", "int8": "D"}
OTHER_MARKER = "P"


def _points(report: dict) -> list[_Point]:
    """One point per row with a p50 whose artifact has a measured top-1 (phone rows take the host's top-1)."""
    accuracy = {a["name"]: (a.get("parity") or {}).get("accuracy") for a in report["artifacts"]}
    points = []
    for r in report["rows"]:
        p50 = (r.get("latency_ms") or {}).get("p50")
        acc = accuracy.get(r["artifact"])
        if p50 is not None and acc is not None and p50 > 0:
            points.append(_Point(float(p50), float(acc) * 100, r))
    return sorted(points, key=lambda p: (p.latency_ms, -p.accuracy))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats: as fast or faster and as accurate or more,
    better in one. Ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def format_colours(formats) -> dict[str, tuple]:
    """A distinct colour per format: the known ones in FORMAT_ORDER, then the rest by name."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"].colors
    palette = tab10[:7] + tab10[8:] + colormaps["Dark2"].colors  # not tab10's grey: the quantization key is grey
    ordered = [f for f in FORMAT_ORDER if f in formats] + sorted(set(formats) - set(FORMAT_ORDER))
    slot = {f: FORMAT_ORDER.index(f) if f in FORMAT_ORDER else len(FORMAT_ORDER) + i for i, f in enumerate(ordered)}
    return {f: palette[slot[f] % len(palette)] for f in ordered}


def plot_accuracy_latency(report: dict, path: Path) -> list[Path]:
    """Top-1 against p50 latency, one numbered point per row; the key beside the plot names each number.

    Colour: format. Marker: quantization. The Pareto front (nothing faster is as accurate) is
    joined by a dashed line, its points ringed and starred in the key.
    """
    fig = accuracy_latency_figure(report)
    if fig is None:
        return []
    try:
        png = figure_png(fig)
    finally:
        pyplot().close(fig)
    atomic_write_bytes(path, png)
    return [path]


def accuracy_latency_figure(report: dict):
    """The figure of plot_accuracy_latency, or None when no row has both a p50 and a top-1."""
    points = _points(report)
    if not points:
        return None
    plt = pyplot()
    height = max(5.5, 1.6 + 0.16 * len(points))
    fig = plt.figure(figsize=(12, height))
    ax = fig.add_axes((0.07, 0.9 / height * 1.0, 0.5, 1 - 1.6 / height))  # fixed: label offsets are laid out in points
    try:
        colours = format_colours({p.format for p in points})
        front = set(pareto_front([(p.latency_ms, p.accuracy) for p in points]))
        _draw_points(ax, points, colours, front)
        _frame(ax, points, report)
        _place_numbers(ax, fig, points)
        _key(fig, points, colours, front, height)
    except Exception:
        plt.close(fig)
        raise
    return fig


def _draw_points(ax, points: list[_Point], colours: dict, front: set[int]) -> None:
    for i, p in enumerate(points):
        marker = QUANT_MARKERS.get(p.quantization, OTHER_MARKER)
        ax.scatter(p.latency_ms, p.accuracy, s=46, marker=marker, color=colours[p.format], edgecolors="black", linewidths=0.4)
        if i in front:
            ax.scatter(p.latency_ms, p.accuracy, s=170, marker="o", facecolors="none", edgecolors="0.25", linewidths=0.8)
    ordered = sorted(front, key=lambda i: points[i].latency_ms)
    xs = [points[i].latency_ms for i in ordered]
    ys = [points[i].accuracy for i in ordered]
    ax.step(xs, ys, where="post", linestyle="--", color="0.35", linewidth=0.9, zorder=1, label="Pareto front")


def _frame(ax, points: list[_Point], report: dict) -> None:
    xs = [p.latency_ms for p in points]
    ys = [p.accuracy for p in points]
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.25, max(xs) * 1.25)
    # Plain numbers at 1-1.5-2-3-5-7 steps: the log axis' default labels are mathtext, which plain-text mode would print raw.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    span = max(max(ys) - min(ys), 1.0)
    ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
    ax.set_xlabel("p50 latency per image, ms (log scale)")
    ax.set_ylabel("top-1 accuracy on the labeled set, %")
    title = f"accuracy vs latency: {report['data'].get('images')} images, {report['machine']['cpu']}"
    ax.set_title(plain_label(title, 90), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)


# Candidate label offsets in points, nearest first: the first that overlaps no marker and no earlier label wins.
_RADII = (7, 12, 18, 26, 36, 48)
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_LABEL_FONT = 7


def _place_numbers(ax, fig, points: list[_Point]) -> None:
    """Each point's number beside it, moved outwards until it overlaps nothing; far ones get a leader line."""
    to_points = 72 / fig.dpi
    centres = [tuple(v * to_points for v in ax.transData.transform((p.latency_ms, p.accuracy))) for p in points]
    box = ax.get_window_extent()
    frame = (box.x0 * to_points, box.y0 * to_points, box.x1 * to_points, box.y1 * to_points)
    taken = [(x - 4, y - 4, x + 4, y + 4) for x, y in centres]  # the markers themselves
    for number, ((x, y), p) in enumerate(zip(centres, points), start=1):
        text = str(number)
        w, h = 0.62 * _LABEL_FONT * len(text) + 2, _LABEL_FONT + 2
        chosen = (_RADII[0], 0)
        for radius in _RADII:
            options = [(radius * dx, radius * dy) for dx, dy in _DIRECTIONS]
            free = [o for o in options if _fits(_label_box(x, y, o, w, h), taken, frame)]
            if free:
                chosen = free[0]
                break
        else:
            chosen = (_RADII[-1], _RADII[-1])
        taken.append(_label_box(x, y, chosen, w, h))
        far = math.hypot(*chosen) > _RADII[1] * 1.5
        leader = {"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3} if far else None
        ax.annotate(text, (p.latency_ms, p.accuracy), xytext=chosen, textcoords="offset points", fontsize=_LABEL_FONT,
                    ha="center", va="center", arrowprops=leader)  # fmt: skip


def _label_box(x: float, y: float, offset: tuple[float, float], w: float, h: float) -> tuple[float, float, float, float]:
    cx, cy = x + offset[0], y + offset[1]
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _fits(box, taken, frame) -> bool:
    x0, y0, x1, y1 = box
    inside = frame[0] <= x0 and frame[1] <= y0 and x1 <= frame[2] and y1 <= frame[3]
    return inside and not any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in taken)


def _key(fig, points: list[_Point], colours: dict, front: set[int], height: float) -> None:
    """Legends for colour and marker, then one line per number: artifact, threads, where, p50 and top-1."""
    from matplotlib.lines import Line2D

    def handle(label: str, **style) -> Line2D:
        return Line2D([], [], linestyle="", markeredgecolor="black", label=plain_label(label, 20), **style)

    quantizations = sorted({p.quantization for p in points}, key=lambda q: (q not in QUANT_MARKERS, q))
    handles = [handle(f, marker="o", color=c) for f, c in colours.items()]
    handles += [handle(q, marker=QUANT_MARKERS.get(q, OTHER_MARKER), color="0.6") for q in quantizations]
    handles.append(Line2D([], [], linestyle="--", color="0.35", marker="o", markerfacecolor="none", label="Pareto front"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.6, 1 - 0.25 / height), fontsize=7, ncol=3,
               title="colour: format, marker: quantization", title_fontsize=7, frameon=False)  # fmt: skip
    lines = []
    for number, p in enumerate(points, start=1):
        star = "*" if number - 1 in front else " "
        where = "" if p.row.get("source") == "host" else f", {plain_label(p.row.get('source'), 12)}"
        lines.append(f"{number:>2}{star} {plain_label(p.row['artifact'], 52)} @{p.row['threads']}t{where}: "
                     f"{p.latency_ms:.2f} ms, {p.accuracy:.1f} %")  # fmt: skip
    fig.text(0.6, 1 - 1.45 / height, "\n".join(lines), fontsize=6.5, family="monospace", va="top", ha="left")


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
