"""Latency and size from the smallest to the largest architecture, and p50 against thread count.

    .venv/bin/python benchmarks/scaling.py [--archs mobilenet_v3_small resnet18 ...]

Latency and size do not depend on the weights, so each architecture is built with
random weights (no download), saved as a checkpoint, exported to ONNX fp32 and benched
(PyTorch eager and ONNX Runtime) at every thread count on one photo per class. The
parity columns of these reports are meaningless by design (untrained heads) and are
not shown. Writes `scaling-<data>-<machine>.json/.md`. About 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import machine_tag, write_result

from dermmobile.bench.sweep import BenchConfig, machine_info, run_bench, versions
from dermmobile.checkpoint import CheckpointMeta, save_checkpoint
from dermmobile.cores import usable_cores
from dermmobile.data import balanced_sample, scan_image_folder
from dermmobile.exporter import plan_export, run_plan
from dermmobile.models import build_model
from dermmobile.preprocess import DEFAULT_SPEC
from dermmobile.tables import markdown_table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
ARCHS = ["mobilenet_v3_small", "efficientnet_lite0", "mobilenet_v3_large", "efficientnet_b0", "resnet18", "resnet50",
         "densenet161", "resnet152"]  # fmt: skip


def measure(arch: str, data: Path, work: Path, threads: list[int], iters: int) -> dict:
    from dermmobile.checkpoint import load_checkpoint

    folder = scan_image_folder(data)
    one_per_class = balanced_sample(folder.samples, len(folder.classes))
    model = build_model(arch, len(folder.classes), weights="none").eval()
    # The bench reads "test_files" to pick its images: one photo per class keeps the sweep short.
    record = {"root": str(folder.root), "test_files": [s.path.relative_to(folder.root).as_posix() for s in one_per_class]}
    checkpoint_path = save_checkpoint(
        work / arch / "random.safetensors", model, CheckpointMeta(arch, folder.classes, DEFAULT_SPEC.to_dict(), data=record)
    )
    checkpoint = load_checkpoint(checkpoint_path)
    export_dir = work / arch / "export"
    (outcome,) = run_plan(checkpoint, plan_export(checkpoint, "onnx", "none", export_dir))
    report = run_bench(BenchConfig(data=data, artifacts=export_dir, checkpoint=checkpoint_path, threads=threads, iters=iters,
                                   warmup=5, e2e_images=0, compile=False))  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    rows = [
        {"runtime": "pytorch-eager" if row.get("artifact") == "pytorch-eager" else row.get("format"),
         "threads": row.get("threads"),
         "p50_ms": (row.get("latency_ms") or {}).get("p50"), "gflops_per_s": row.get("gflops_per_s"),
         "peak_rss_mb": row.get("peak_rss_mb"), "flops": row.get("flops")}
        for row in report["rows"]
    ]  # fmt: skip
    flops = next((r["flops"] for r in rows if r["flops"]), None)
    size = outcome.artifact.manifest.bytes if outcome.artifact else None
    return {"arch": arch, "params": params, "gflops": flops / 1e9 if flops else None, "onnx_bytes": size,
            "export_error": outcome.error, "rows": rows, "gemm_peak_gflops": report["gemm_peak_gflops"]}  # fmt: skip


def markdown(report: dict) -> str:
    threads = report["threads"]
    p50_columns = [f"{runtime} p50 @{t}" for runtime in ("eager", "ONNX") for t in threads]
    table = []
    for entry in report["archs"]:
        cells = []
        for runtime in ("pytorch-eager", "onnx"):
            for t in threads:
                p50 = next(
                    (r["p50_ms"] for r in entry["rows"] if (r["runtime"] or "").startswith(runtime) and r["threads"] == t), None
                )
                cells.append(f"{p50:.1f} ms" if p50 else "-")
        size = f"{entry['onnx_bytes'] / 1e6:.1f} MB" if entry["onnx_bytes"] else "-"
        gflop = f"{entry['gflops']:.2f}" if entry["gflops"] else "-"
        table.append([entry["arch"], f"{entry['params'] / 1e6:.1f} M", gflop, size, *cells])
    title = f"# Scaling on a {report['machine']['cores']}-core {report['machine']['arch']} CPU (batch 1, 224x224)"
    return "\n".join([title, "", markdown_table(table, ["arch", "params", "GFLOP", "ONNX size", *p50_columns])]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, usable_cores()}))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    archs = [measure(arch, args.data, args.work, args.threads, args.iters) for arch in args.archs]
    tag = f"{args.data.name}-{machine_tag()}"
    report = {"machine": machine_info(), "versions": versions(), "threads": args.threads, "archs": archs}
    _, md_path = write_result(args.out, f"scaling-{tag}", report, markdown(report))
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
