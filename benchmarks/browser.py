"""The same artifacts in headless Chromium (LiteRT.js, onnxruntime-web) beside the Python runtimes, in one run.

    .venv/bin/python benchmarks/browser.py --checkpoint runs/paper-protocol/efficientnet_lite0-full/best.safetensors

Exports the checkpoint to TFLite and ONNX, fp32 and int8 (int8 calibrated on 64
class-balanced real photos), then in one run: `dermmobile bench` over the held-out test
split (PyTorch eager, ai-edge-litert, onnxruntime, one process per job) at 1 and 2 threads,
and each artifact's web demo (`dermmobile web`, golden samples = a few held-out photos)
in Debian's headless Chromium at 1 thread and, cross-origin isolated, 2 threads: p50 of
inference per image after warm-up, the golden self-check, load and first-inference time.
The browser rows are merged into the bench report (`bench --merge` semantics) and
summarised in `browser-<arch>-<data>-<machine>.json/.md`. Needs `apt-get install -y
chromium` and `npm ci` in web_demo/. About 10 minutes for efficientnet_lite0 on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from _results import machine_tag, write_result

from dermmobile.bench.merge import check_row, merge_rows
from dermmobile.bench.report import write_reports
from dermmobile.bench.sweep import BenchConfig, machine_info, run_bench, select_samples, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.errors import MissingBackendError
from dermmobile.exporter import plan_export, run_plan
from dermmobile.tables import markdown_table
from dermmobile.web import CHROMIUM, browser_missing, build_site, drive_chromium, package_version, serving

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
ARTIFACTS = [("tflite", "none"), ("tflite", "int8"), ("onnx", "none"), ("onnx", "int8")]
GOLDEN_IMAGES = 8


def export(checkpoint_path: Path, data: Path, out: Path, calib_count: int) -> list[Path]:
    checkpoint = load_checkpoint(checkpoint_path)
    paths = []
    for target, quantize in ARTIFACTS:
        calib = data if quantize == "int8" else None
        plan = plan_export(checkpoint, target, quantize, out, calib_data=calib, calib_count=calib_count, timeout=1800)
        (outcome,) = run_plan(checkpoint, plan)
        if outcome.artifact is None:
            raise SystemExit(f"export {target} {quantize} failed: {outcome.error}")
        paths.append(outcome.artifact.path)
    return paths


def browser_rows(artifacts: list[Path], images: list[Path], work: Path, threads: list[int], iters: int, warmup: int) -> list:
    """One page per artifact x thread count, all in one Chromium session; returns the pages' results."""
    sites = {path.name: build_site(path, images, work / "sites" / path.stem).folder for path in artifacts}
    with_urls = []
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serving(folder)) for name, folder in sites.items()}
        for name in sites:
            for count in threads:
                with_urls.append({"name": f"{name}@{count}", "url": f"{urls[name]}?threads={count}", "golden_check": True,
                                  "bench": {"iterations": iters, "warmup": warmup}})  # fmt: skip
        return drive_chromium(with_urls, work, timeout_s=3600)["pages"]


def summary_rows(report: dict, pages: list[dict], threads: list[int]) -> list[dict]:
    """Per artifact: Python p50 and browser p50 at each thread count, and what the browser's self-check found."""
    host = {(r["artifact"], r["threads"]): r for r in report["rows"] if r.get("source", "host") == "host"}
    out = []
    for artifact in [a for a in report["artifacts"] if a.get("role") == "artifact"]:
        name = artifact["name"]
        entry = {"artifact": name, "format": artifact["format"], "quantization": artifact["quantization"],
                 "python_runtime": artifact.get("runtime")}  # fmt: skip
        for count in threads:
            page = next((p for p in pages if p["name"] == f"{name}@{count}"), {})
            python = (host.get((name, count)) or {}).get("latency_ms") or {}
            browser = (page.get("bench") or {}).get("latency_ms") or {}
            entry[f"python_p50_t{count}"] = python.get("p50")
            entry[f"browser_p50_t{count}"] = browser.get("p50")
            entry[f"browser_p90_t{count}"] = browser.get("p90")
            entry[f"browser_threads_t{count}"] = page.get("threads")
            entry[f"ratio_t{count}"] = browser["p50"] / python["p50"] if python.get("p50") and browser.get("p50") else None
            samples = (page.get("golden") or {}).get("samples") or []
            entry[f"top1_agree_t{count}"] = f"{sum(s['top1'] == s['python_top1'] for s in samples)}/{len(samples)}"
            entry[f"max_logit_diff_t{count}"] = max((s["max_abs_logit_diff"] for s in samples), default=None)
            entry[f"load_ms_t{count}"] = page.get("load_ms")
            entry[f"error_t{count}"] = page.get("error") or page.get("driver_error")
        out.append(entry)
    return out


def markdown(summary: dict) -> str:
    threads = summary["threads"]
    headers = ["artifact", *[f"{who} p50 @{t}" for t in threads for who in ("Python", "browser")],
               *[f"browser/Python @{t}" for t in threads], "browser top-1 = Python (golden)", "max abs logit diff"]  # fmt: skip
    rows = []
    for entry in summary["rows"]:
        cells = [entry["artifact"]]
        for count in threads:
            for who in ("python", "browser"):
                value = entry[f"{who}_p50_t{count}"]
                cells.append(f"{value:.2f} ms" if value is not None else (entry[f"error_t{count}"] or "-")[:80])
        cells += [f"{entry[f'ratio_t{count}']:.2f}x" if entry[f"ratio_t{count}"] else "-" for count in threads]
        cells.append(" / ".join(entry[f"top1_agree_t{count}"] for count in threads))
        diffs = [entry[f"max_logit_diff_t{count}"] for count in threads]
        cells.append(f"{max(d for d in diffs if d is not None):.2g}" if any(d is not None for d in diffs) else "-")
        rows.append(cells)
    machine = summary["machine"]
    return "\n".join([
        f"# Browser vs Python: {summary['arch']} on {summary['data']} ({machine['cores']}-core {machine['arch']})",
        "",
        f"Inference only, batch 1, p50 after warm-up: Python = `dermmobile bench` ({summary['iters']} calls, one process per "
        f"job); browser = {summary['browser']} headless, {summary['browser_iters']} calls over {summary['golden_images']} "
        "golden photos, 1 thread, and 2 threads cross-origin isolated (WebAssembly threads). LiteRT.js runs the int8 "
        f"artifact as its uint8-I/O twin (same int8 body). Preprocessing {summary['preprocess']}. Load average at the end: "
        f"{machine.get('load_average_1_5_15min')}.",
        "",
        markdown_table(rows, headers),
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, default=Path("runs/browser-bench"), help="exports and built sites")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=100, help="timed calls per artifact and thread count, both sides")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calib-count", type=int, default=64)
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        raise MissingBackendError(f"the browser benchmark needs {missing}")
    checkpoint = load_checkpoint(args.checkpoint)
    arch = checkpoint.meta.arch
    tag = f"{arch}-{args.data.name}-{machine_tag()}"
    started = time.time()
    artifacts = export(args.checkpoint, args.data, args.work / "export", args.calib_count)
    _, samples, _ = select_samples(args.data, checkpoint.meta.labels, checkpoint.meta.data, "test")
    images = [s.path for s in samples[:: max(1, len(samples) // GOLDEN_IMAGES)][:GOLDEN_IMAGES]]
    report = run_bench(BenchConfig(data=args.data, artifacts=args.work / "export", checkpoint=args.checkpoint,
                                   threads=args.threads, iters=args.iters, warmup=args.warmup, compile=False))  # fmt: skip
    pages = browser_rows(artifacts, images, args.work, args.threads, args.iters, args.warmup)
    rows = [check_row(page["bench"], f"browser page {page['name']}") for page in pages if page.get("bench")]
    merge_rows(report, [{**row, "merged_from": "benchmarks/browser.py"} for row in rows])
    write_reports(report, args.out / f"browser-{tag}")
    summary = {
        "what": "inference p50 of the same artifacts: Python runtimes (dermmobile bench) and headless Chromium (web demo)",
        "arch": arch, "data": args.data.name, "threads": args.threads, "iters": args.iters,
        "preprocess": checkpoint.meta.preprocess.get("algorithm", "dermmobile-preprocess-v1"),
        "browser_iters": args.iters, "golden_images": len(images), "browser": f"Chromium ({CHROMIUM})",
        "browser_user_agent": next((p["bench"]["user_agent"] for p in pages if p.get("bench")), None),
        "runtimes": {"LiteRT.js": package_version("@litertjs/core"), "onnxruntime-web": package_version("onnxruntime-web")},
        "machine": machine_info(), "versions": versions(), "seconds": round(time.time() - started, 1),
        "rows": summary_rows(report, pages, args.threads), "pages": pages, "bench": f"browser-{tag}/bench.json",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    _, md_path = write_result(args.out, f"browser-{tag}", summary, markdown(summary))
    print(f"wrote {md_path} and {args.out / f'browser-{tag}'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
