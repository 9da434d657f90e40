"""The per-layer sensitivity report: `<artifact>.sensitivity.json`, `.md` and `.png` beside the artifact.

One row per quantizable layer: its share of the MACs, and the simulated agreement, mean
logit error and top-1 with only that layer in float (and, with --explain, with only that
layer quantized). The layers the fallback kept in float are marked.
"""

from __future__ import annotations

from pathlib import Path

from dermmobile.fsutil import atomic_path, atomic_write_json, atomic_write_text

SCHEMA = "dermmobile-sensitivity"


def write_sensitivity_report(artifact_file: Path, result, layers) -> Path:
    """Write the three files for `result` (a FallbackResult with sensitivity); returns the JSON path."""
    artifact_file = Path(artifact_file)
    stem = artifact_file.with_name(f"{artifact_file.name}.sensitivity")
    kept = set(result.float_layers)
    rows = [vars(row) | {"kept_float": row.layer in kept} for row in result.sensitivity]
    record = {
        "schema": SCHEMA,
        "artifact": artifact_file.name,
        "method": "the target's int8 simulation (a PT2E fake-quant graph of its quantizer, calibrated once), "
        "one layer switched per row",
        "baseline_all_int8": result.baseline,
        "float_layers": list(result.float_layers),
        "float_macs_share": result.float_macs_share,
        "layers": rows,
    }
    json_file = Path(f"{stem}.json")
    atomic_write_json(json_file, record)
    atomic_write_text(Path(f"{stem}.md"), _markdown(record))
    _plot(record, Path(f"{stem}.png"))
    return json_file


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _markdown(record: dict) -> str:
    from tabulate import tabulate

    base = record["baseline_all_int8"] or {}
    explain = any(row.get("quantized_alone") for row in record["layers"])
    headers = ["layer", "kind", "share of MACs", "float alone: agreement", "mean logit error", "top-1", "error removed"]
    headers += ["quantized alone: agreement", "mean logit error"] if explain else []
    headers.append("kept float")
    table = []
    for row in sorted(record["layers"], key=lambda r: r["gain"], reverse=True):
        alone = row["float_alone"]
        line = [row["layer"], row["kind"], _pct(row["macs_share"]), _pct(alone["agreement"]),
                f"{alone['mean_abs_logit']:.4f}", _pct(alone["accuracy"]), f"{row['gain']:+.4f}"]  # fmt: skip
        if explain:
            only = row.get("quantized_alone") or {}
            line += [_pct(only.get("agreement")), f"{only.get('mean_abs_logit', 0):.4f}"]
        line.append("yes" if row["kept_float"] else "")
        table.append(line)
    return "\n".join([
        f"# int8 sensitivity per layer: {record['artifact']}",
        "",
        f"Simulated on the tuning images ({record['method']}). All layers int8: agreement {_pct(base.get('agreement'))}, "
        f"mean logit error {base.get('mean_abs_logit', 0):.4f}, top-1 {_pct(base.get('accuracy'))}.",
        f"Kept in float by the fallback: {', '.join(record['float_layers']) or 'none'} "
        f"({_pct(record['float_macs_share'])} of MACs). Most sensitive first.",
        "",
        tabulate(table, headers=headers, tablefmt="github", disable_numparse=True),
        "",
    ])  # fmt: skip


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["layers"]
    gains = [row["gain"] for row in rows]
    colours = ["tab:red" if row["kept_float"] else "tab:blue" for row in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.22), 4.5))
    ax.bar(range(len(rows)), gains, color=colours)
    ax.set_xticks(range(len(rows)), [row["layer"] for row in rows], rotation=90, fontsize=6)
    ax.set_ylabel("mean logit error removed when only this layer is float")
    ax.set_title(f"{record['artifact']}: int8 sensitivity by layer (red: kept float)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
