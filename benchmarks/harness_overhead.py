"""Does the bench harness slow down what it measures? Harness timing vs a bare loop, same runtime, same run.

    .venv/bin/python benchmarks/harness_overhead.py export/RUN/model-onnx-none.onnx --threads 2
    .venv/bin/python benchmarks/harness_overhead.py --checkpoint runs/x/best.safetensors --threads 1

Alternates rounds of the bench's own timing loop (`dermmobile.bench.latency.time_calls`,
one clock read around every call) and a bare `for` loop timed once as a whole, on one
loaded Runtime at one thread count, so drift (thermal, other processes) hits both alike.
The ratio of medians harness mean / bare mean is written to
benchmarks/results/harness-overhead-<artifact>-t<threads>.json. The logic lives in
dermmobile.bench; this script only wires it together.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dermmobile.bench.latency import THREAD_ENV, summarize, thread_limit, time_calls
from dermmobile.bench.sweep import machine_info, versions
from dermmobile.bench.worker import Job, open_runtime
from dermmobile.fsutil import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def bare_mean_ms(predict, sample: np.ndarray, iters: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iters):
        predict(sample)
    return (time.perf_counter_ns() - start) / 1e6 / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", nargs="?", type=Path, help="an artifact or its .json manifest")
    parser.add_argument("--checkpoint", type=Path, help="time the checkpoint's eager PyTorch model instead")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--iters", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating harness/bare rounds")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/harness-overhead-...json)")
    args = parser.parse_args(argv)
    if (args.artifact is None) == (args.checkpoint is None):
        parser.error("give exactly one of ARTIFACT or --checkpoint")
    for name in THREAD_ENV:  # read by runtimes that start their pools after this point
        os.environ[name] = str(args.threads)
    source = args.checkpoint or args.artifact
    kind = "checkpoint" if args.checkpoint else "artifact"
    load, _ = open_runtime(Job(kind, args.threads, path=str(source)))
    runtime = load()
    if kind == "checkpoint":
        from dermmobile.checkpoint import read_meta

        crop = int(read_meta(source).preprocess["crop"])
    else:
        from dermmobile.artifact import load_artifact

        crop = int(load_artifact(source, verify=False).manifest.preprocess["crop"])
    sample = np.random.default_rng(0).standard_normal((1, 3, crop, crop), dtype=np.float32)
    harness, bare = [], []
    with thread_limit(args.threads):
        for _ in range(max(10, args.iters // 10)):  # warm-up
            runtime.predict(sample)
        for _ in range(args.rounds):
            harness.append(summarize(time_calls(lambda: runtime.predict(sample), args.iters)).mean)
            bare.append(bare_mean_ms(runtime.predict, sample, args.iters))
    ratio = statistics.median(harness) / statistics.median(bare)
    name = Path(source).name.removesuffix(".json")
    out = args.out or RESULTS / f"harness-overhead-{name}-t{args.threads}.json"
    atomic_write_json(
        out,
        {
            "what": "bench harness timing loop vs a bare loop over the same Runtime.predict, alternating rounds",
            "source": str(source),
            "runtime": getattr(runtime, "name", type(runtime).__name__),
            "threads": args.threads,
            "iters_per_round": args.iters,
            "rounds": args.rounds,
            "harness_mean_ms": harness,
            "bare_mean_ms": bare,
            "ratio_of_medians": ratio,
            "overhead_percent": (ratio - 1) * 100,
            "machine": machine_info(),
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    print(f"harness {statistics.median(harness):.3f} ms vs bare {statistics.median(bare):.3f} ms: ratio {ratio:.4f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
