"""Every target x quantization for one checkpoint: size, export time, parity, then the bench sweep.

    .venv/bin/python benchmarks/export_matrix.py --checkpoint runs/paper-protocol/efficientnet_lite0-full/best.safetensors

Exports with dermmobile.exporter (int8 calibrated on 64 class-balanced real photos, its
parity checked on every other photo), then runs `dermmobile bench` over the held-out
test split at 1 and all threads with PyTorch eager and torch.compile as baselines.
Writes `export-matrix-<arch>-<data>-<machine>.json/.md` and the bench reports in the
folder of the same name. About 15 minutes for efficientnet_lite0 on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from dermmobile.bench.report import write_reports
from dermmobile.bench.sweep import BenchConfig, machine_info, run_bench, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.exporter import plan_export, run_plan
from dermmobile.fsutil import atomic_write_json, atomic_write_text
from dermmobile.tables import markdown_table
from dermmobile.targets import target_names, valid_combinations
from dermmobile.targets.base import QUANTIZATIONS

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"


def export_all(checkpoint_path: Path, data: Path, out: Path, calib_count: int, timeout: float | None,
               targets: list[str], quantizations: list[str]) -> list[dict]:  # fmt: skip
    checkpoint = load_checkpoint(checkpoint_path)
    combos = valid_combinations()
    rows = []
    for quantize in quantizations:
        chosen = [t for t in targets if quantize in combos[t]]
        if not chosen:
            continue
        calib = data if quantize == "int8" else None
        plan = plan_export(checkpoint, chosen, quantize, out, calib_data=calib, calib_count=calib_count, timeout=timeout)
        for outcome in run_plan(checkpoint, plan):
            manifest = outcome.artifact.manifest if outcome.artifact else None
            parity = (manifest.parity if manifest else None) or {}
            rows.append({
                "target": outcome.target, "quantization": quantize, "seconds": outcome.seconds,
                "file": manifest.file if manifest else None, "bytes": manifest.bytes if manifest else None,
                "status": manifest.status if manifest else "error", "error": outcome.error,
                "parity_images": parity.get("images"), "agreement": parity.get("agreement"),
                "flips": len(parity.get("flips") or []), "accuracy": parity.get("accuracy"),
                "reference_accuracy": parity.get("reference_accuracy"), "max_abs_logit": parity.get("max_abs_logit"),
            })  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Export matrix: {report['arch']} on {report['data']} ({report['machine']['cores']}-core {report['machine']['arch']})",
        "",
        "Export-time parity: fp32/fp16 on the held-out test split, int8 on every photo not used for calibration "
        f"({report['calib_count']} class-balanced photos). Latency: see the bench report beside this file.",
        "",
    ]
    cells = []
    for row in report["exports"]:
        size = f"{row['bytes'] / 1e6:.2f} MB" if row["bytes"] else "-"
        agree = f"{row['agreement']:.1%}" if row["agreement"] is not None else "-"
        top1 = f"{row['accuracy']:.1%} ({row['reference_accuracy']:.1%})" if row["accuracy"] is not None else "-"
        status = row["status"] if not row["error"] else f"{row['status']}: {row['error'][:160]}"
        cells.append([row["target"], row["quantization"], size, f"{row['seconds']:.0f} s", row["parity_images"] or "-", agree,
                      row["flips"], top1, status])  # fmt: skip
    headers = ["target", "quantization", "size", "export time", "parity images", "agreement", "flips", "top-1 (ref)", "status"]
    return "\n".join([*lines, markdown_table(cells, headers)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--export-dir", type=Path, default=Path("export/matrix"))
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800, help="per conversion, in a subprocess")
    parser.add_argument("--targets", nargs="+", default=target_names(), help="default: every target")
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS), help="default: every quantization")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = parser.parse_args(argv)
    arch = load_checkpoint(args.checkpoint).meta.arch
    tag = f"{arch}-{args.data.name}-{platform.machine()}-{machine_info()['cores']}core"
    exports = export_all(
        args.checkpoint, args.data, args.export_dir, args.calib_count, args.timeout, args.targets, args.quantizations
    )
    bench = run_bench(BenchConfig(data=args.data, artifacts=args.export_dir, checkpoint=args.checkpoint,
                                  threads=args.threads, iters=args.iters, compile=not args.no_compile))  # fmt: skip
    write_reports(bench, args.out / f"export-matrix-{tag}")
    report = {"arch": arch, "data": args.data.name, "calib_count": args.calib_count, "machine": machine_info(),
              "versions": versions(), "exports": exports, "bench": f"export-matrix-{tag}/bench.json"}  # fmt: skip
    atomic_write_json(args.out / f"export-matrix-{tag}.json", report)
    atomic_write_text(args.out / f"export-matrix-{tag}.md", markdown(report))
    print(f"wrote {args.out / f'export-matrix-{tag}.md'} and {args.out / f'export-matrix-{tag}'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
