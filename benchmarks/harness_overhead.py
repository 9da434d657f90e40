"""Does the bench add time to what it measures? Its timing loop against each runtime's own API, same run.

    .venv/bin/python benchmarks/harness_overhead.py export/RUN --checkpoint CKPT --threads 2

For every artifact in the folder (and the checkpoint's eager PyTorch model), in one process at
one thread count, two loops over the same file:
- bench: the file opened the way a bench job opens it (`dermmobile.bench.worker.loader`)
  and timed by the bench's own loop (`latency.time_calls` around `Runtime.predict` on one
  float32 NCHW image): what `dermmobile bench` reports as latency;
- bare: the same file opened with the runtime's own API and called the way its documentation
  shows, with the input already in the file's own dtype and layout (ai-edge-litert
  `Interpreter` set_tensor / invoke / get_tensor, onnxruntime `InferenceSession.run`,
  ExecuTorch `Runtime` `method.execute`, torch eager or the lite interpreter under
  `inference_mode`), each call timed with `perf_counter_ns`.
The loops alternate in short rounds (bench first in even rounds, bare first in odd), so drift
and other work on the machine hit both alike: on the loaded 2-core machine, rounds of 10 calls
put two identical bare loops within 2 % of each other where rounds of 100 calls differed by
10 %. Per artifact: each round's p50 and mean of both loops, and the overhead ratio: the
median over rounds of bench p50 / bare p50 of the same round pair (1.00 = none).
Written to benchmarks/results/harness-overhead-<arch>-t<threads>-<machine>.json and .md.
Loading and timing logic is the bench's; this script only adds the bare loops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _results import machine_tag  # stdlib and dermmobile.fsutil only: no runtime's pool starts

from dermmobile.cores import usable_cores  # standard library only

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT = 1.05  # the bench may add at most 5 % to a bare loop's p50 (issue 16)


# -- the runtimes' own APIs: each returns one call of one image, input prepared once ------------------
def bare_tflite(path: Path, threads: int, image: np.ndarray) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if inp["shape"][-1] == 3:  # an NHWC file
        image = image.transpose(0, 2, 3, 1)
    if np.issubdtype(inp["dtype"], np.integer):  # quantized input: the file's own scale and zero point
        scale, zero_point = inp["quantization"]
        limits = np.iinfo(inp["dtype"])
        image = np.clip(np.round(image / scale) + zero_point, limits.min, limits.max)
    value = np.ascontiguousarray(image, dtype=inp["dtype"])

    def call():
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return call


def bare_onnx(path: Path, threads: int, image: np.ndarray) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image}
    return lambda: session.run(None, feed)


def bare_executorch(path: Path, threads: int, image: np.ndarray) -> Callable[[], object]:
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")  # XNNPACK's pool is process-wide: set by the bench's load
    inputs = [torch.from_numpy(image)]
    return lambda: method.execute(inputs)


def _torch_call(module, threads: int, image: np.ndarray) -> Callable[[], object]:
    import torch

    torch.set_num_threads(threads)
    x = torch.from_numpy(image)

    def call():
        with torch.inference_mode():
            return module(x)

    return call


def bare_torchscript(path: Path, threads: int, image: np.ndarray) -> Callable[[], object]:
    from torch.jit.mobile import _load_for_lite_interpreter

    return _torch_call(_load_for_lite_interpreter(str(path)), threads, image)


def bare_pytorch(path: Path, threads: int, image: np.ndarray) -> Callable[[], object]:
    from dermmobile.checkpoint import load_checkpoint

    return _torch_call(load_checkpoint(path).model.eval(), threads, image)


BARE = {"tflite": bare_tflite, "onnx": bare_onnx, "executorch": bare_executorch, "torchscript": bare_torchscript,
        "pytorch": bare_pytorch}  # fmt: skip


# -- the comparison ---------------------------------------------------------------------------------------
def bare_times(call: Callable[[], object], iters: int) -> list[float]:
    """Milliseconds of each call, timed the plainest way."""
    out = []
    for _ in range(iters):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def compare(subject: dict, threads: int, image: np.ndarray, iters: int, rounds: int) -> dict:
    """Alternating rounds of the bench's loop and the bare loop over one file."""
    from dermmobile.bench.latency import summarize, time_calls
    from dermmobile.bench.worker import Job, loader

    load, check, _ = loader(Job(subject["kind"], threads, path=str(subject["path"])))
    runtime = load()
    check(runtime)
    bare = BARE[subject["format"]](subject["file"], threads, np.ascontiguousarray(image))
    loops = {"bench": lambda: time_calls(lambda: runtime.predict(image), iters), "bare": lambda: bare_times(bare, iters)}
    for loop in loops.values():  # warm-up: first-call work and thread pools out of the way
        loop()
    stats: dict[str, list] = {"bench": [], "bare": []}
    for index in range(rounds):
        for name in ("bench", "bare") if index % 2 == 0 else ("bare", "bench"):
            stats[name].append(summarize(loops[name]()))
    ratios = [bench.p50 / bare.p50 for bench, bare in zip(stats["bench"], stats["bare"])]
    return {
        "runtime": getattr(runtime, "name", type(runtime).__name__),
        "bench_p50_ms": [s.p50 for s in stats["bench"]],
        "bare_p50_ms": [s.p50 for s in stats["bare"]],
        "bench_mean_ms": [s.mean for s in stats["bench"]],
        "bare_mean_ms": [s.mean for s in stats["bare"]],
        "ratio": statistics.median(ratios),
        "ratio_per_round": ratios,
    }


def subjects(folder: Path | None, checkpoint: Path | None) -> list[dict]:
    """name, kind, path (as the bench is given it), file (what the runtime opens), format, quantization, crop and arch
    of the checkpoint and of each artifact in the folder."""
    out = []
    if checkpoint is not None:
        from dermmobile.checkpoint import read_meta

        meta = read_meta(checkpoint)
        out.append({"name": "pytorch-eager", "kind": "checkpoint", "path": checkpoint, "file": checkpoint, "format": "pytorch",
                    "quantization": "none", "crop": int(meta.preprocess["crop"]), "arch": meta.arch})  # fmt: skip
    if folder is not None:
        from dermmobile.artifact import find_artifacts, load_artifact

        for manifest_file in find_artifacts(folder):
            artifact = load_artifact(manifest_file)
            m = artifact.manifest
            out.append({"name": m.file, "kind": "artifact", "path": manifest_file, "file": artifact.path, "format": m.format,
                        "quantization": m.quantization, "crop": int(m.preprocess["crop"]), "arch": m.arch})  # fmt: skip
    return out


def run(args) -> dict:
    rows = []
    chosen = subjects(args.artifacts, args.checkpoint)
    for subject in chosen:
        image = np.random.default_rng(0).standard_normal((1, 3, subject["crop"], subject["crop"]), dtype=np.float32)
        row = {key: str(subject[key]) for key in ("name", "format", "quantization", "path")}
        if subject["format"] not in BARE:
            rows.append({**row, "status": "not-run", "error": f"no bare loop for {subject['format']} here"})
            continue
        try:
            row |= {"status": "ok", **compare(subject, args.threads, image, args.iters, args.rounds)}
        except Exception as exc:  # MissingBackendError, a runtime that will not load: its row says so, the rest go on
            row |= {"status": "not-run", "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"{row['name']}: " + (f"bench / bare p50 {row['ratio']:.3f}" if "ratio" in row else row["error"]), flush=True)
        rows.append(row)
    return {"arch": next((s["arch"] for s in chosen), "model"), "rows": rows}


def markdown(report: dict) -> str:
    from dermmobile.tables import markdown_table

    m = report["machine"]
    cells = []
    for r in report["rows"]:
        if r["status"] != "ok":
            cells.append([r["name"], r["format"], r["quantization"], "–", "–", "–", "–", r["error"]])
            continue
        bench, bare = statistics.median(r["bench_p50_ms"]), statistics.median(r["bare_p50_ms"])
        q1, _, q3 = statistics.quantiles(r["ratio_per_round"], n=4)
        spread = f"{q1:.3f}–{q3:.3f}"
        verdict = "within 5 %" if r["ratio"] <= LIMIT else "OVER 5 %"
        cells.append([r["name"], r["format"], r["quantization"], r["runtime"], f"{bench:.3f}", f"{bare:.3f}",
                      f"{r['ratio']:.3f} ({spread})", verdict])  # fmt: skip
    headers = ["artifact", "format", "quant", "runtime", "bench p50 ms", "bare p50 ms", "bench / bare (quartiles)", "verdict"]
    return "\n".join([
        f"# Bench timing loop vs each runtime's own API: {report['arch']}, {report['threads']} thread(s)",
        "",
        f"{m['cpu']}, {m['cores']} cores, load average (1, 5, 15 min) {m.get('load_average_at_start')} at the start "
        f"and {m['load_average_1_5_15min']} at the end (above {m['cores']}: other work shared the CPUs). Batch 1; "
        f"{report['rounds']} alternating rounds of {report['iters']} calls per loop; p50 ms: median over rounds; "
        "bench / bare: median over round pairs of the ratio of their p50s, with its quartiles. "
        "The bare loop feeds the file's own input dtype and layout (int8 TFLite: an input quantized beforehand), so a "
        "ratio above 1 is what the bench's Runtime adds (layout change, quantization, copies).",
        "",
        markdown_table(cells, headers),
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="?", type=Path, help="folder of exported artifacts (export/RUN)")
    parser.add_argument("--checkpoint", type=Path, help="also compare the checkpoint's eager PyTorch model")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--iters", type=int, default=20, help="calls per loop per round (short rounds: see above)")
    parser.add_argument("--rounds", type=int, default=40, help="alternating bench/bare rounds")
    parser.add_argument("--out", type=Path, help="result file stem (default benchmarks/results/harness-overhead-...)")
    args = parser.parse_args(argv)
    if args.artifacts is None and args.checkpoint is None:
        parser.error("give an artifacts folder and/or --checkpoint")
    from dermmobile.bench.latency import THREAD_ENV

    for name in THREAD_ENV:  # read by runtimes when their pools start, so before any of them is imported
        os.environ[name] = str(args.threads)
    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.fsutil import atomic_write_json, atomic_write_text

    load_at_start = machine_info()["load_average_1_5_15min"]
    report = run(args)
    machine = machine_info() | {"load_average_at_start": load_at_start}
    report |= {"what": "bench timing loop vs each runtime's own API on the same file, alternating rounds",
               "threads": args.threads, "iters": args.iters, "rounds": args.rounds, "machine": machine,
               "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    stem = args.out or RESULTS / f"harness-overhead-{report['arch']}-t{args.threads}-{machine_tag()}"
    atomic_write_json(stem.with_name(stem.name + ".json"), report)
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
