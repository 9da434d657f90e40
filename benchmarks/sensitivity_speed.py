"""The fallback's per-layer sensitivity: each float set simulated alone (before) against all sets together (now).

`dermmobile export --quantize int8` ranks layers by simulating, on the tuning photos the
search picks (`--sensitivity-images`, 32), every layer alone in float. `Simulation.each`
runs the graph once per batch and reruns each set only from the first node it switches;
`Simulation.logits` runs the whole graph per set. This times both, in alternating rounds
in one run, on the same simulation, compares their logits (the largest difference) and the
layer ranking the search would build from each, and records the peak memory of the process.

    python benchmarks/sensitivity_speed.py --checkpoint best.safetensors --target tflite

Writes `results/sensitivity-speed-<model>-<target>-<machine>.{json,md}`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine_tag, write_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sd198-27"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--target", default="tflite", choices=["tflite", "executorch", "onnx"])
    parser.add_argument("--data", type=Path, default=DATA, help="calibration and tuning photos (an ImageFolder)")
    parser.add_argument("--images", type=int, default=32, help="simulated photos (the export's default: 32)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each way")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import export_request, plan_export
    from dermmobile.quantization.export import always_float, plan_layers
    from dermmobile.quantization.fallback import spread
    from dermmobile.targets import get_target

    checkpoint = load_checkpoint(args.checkpoint)
    target = get_target(args.target)
    plan = plan_export(checkpoint, args.target, "int8", Path("export/sensitivity-speed"), calib_data=args.data)
    layers = plan_layers(checkpoint, plan)
    base = always_float(checkpoint, plan, layers)
    images = plan.tuning.arrays[spread(len(plan.tuning.arrays), args.images)]
    started = time.perf_counter()
    simulation = target.simulation(export_request(checkpoint, target, plan))
    build_seconds = time.perf_counter() - started
    sets = [base, *(base | {layer.name} for layer in layers if layer.name not in base)]
    memory_before = peak_rss_mib()
    times: dict[str, list[float]] = {"one set at a time": [], "together": []}
    for _ in range(args.rounds):
        started = time.perf_counter()
        alone = [simulation.logits(images, float_layers) for float_layers in sets]
        times["one set at a time"].append(time.perf_counter() - started)
        started = time.perf_counter()
        together = simulation.each(images, sets)
        times["together"].append(time.perf_counter() - started)
    largest = max(float(np.abs(a - b).max()) for a, b in zip(alone, together))
    from dermmobile.targets.base import TorchRuntime

    reference = TorchRuntime(checkpoint.model).predict(images)

    def ranking(logits: list) -> list[int]:  # by the gain measure_sensitivity computes: logit error removed
        errors = [float(np.abs(one - reference).mean()) for one in logits]
        return sorted(range(1, len(errors)), key=lambda index: errors[0] - errors[index], reverse=True)

    same_ranking = ranking(alone) == ranking(together)
    machine = machine_info()
    best = {way: min(seconds) for way, seconds in times.items()}
    report = {
        "checkpoint": str(args.checkpoint), "target": args.target, "images": len(images), "float_sets": len(sets),
        "threads": torch.get_num_threads(), "simulation_build_seconds": round(build_seconds, 1),
        "seconds": {way: [round(s, 2) for s in seconds] for way, seconds in times.items()},
        "speedup": round(best["one set at a time"] / best["together"], 2), "largest_logit_difference": largest,
        "same_ranking": same_ranking,
        "peak_rss_mib_before_timing": round(memory_before), "peak_rss_mib": round(peak_rss_mib()),
        "machine": machine, "versions": versions(),
    }  # fmt: skip
    lines = [
        f"# Per-layer sensitivity: {checkpoint.meta.arch}, {args.target} simulation, {len(images)} photos",
        "",
        f"CPU: {machine['cpu']} ({machine['cores']} cores), torch at {report['threads']} threads. {len(sets)} float sets "
        f"(everything int8 but the always-float layers, then each other layer alone in float), simulated on "
        f"{len(images)} tuning photos of `{args.data.name}`; {args.rounds} alternating rounds, best of each.",
        f"Checkpoint: `{args.checkpoint}`. The simulation itself took {build_seconds:.0f} s to build (once per export).",
        "",
        "| way | seconds (each round) | best |",
        "|---|---|---|",
        *(f"| {way} | {', '.join(f'{s:.1f}' for s in seconds)} | {best[way]:.1f} |" for way, seconds in times.items()),
        "",
        f"Together is **{report['speedup']:.2f}x** faster; the logits differ by at most {largest:.2g} (float rounding: "
        f"batches of other sizes), and the layer ranking the search builds is "
        f"{'the same' if same_ranking else 'NOT the same'}. Peak memory of the process: "
        f"{report['peak_rss_mib_before_timing']} MiB before timing, {report['peak_rss_mib']} MiB after.",
    ]
    stem = f"sensitivity-speed-{checkpoint.meta.arch}-{args.target}-{machine_tag()}"
    for path in write_result(RESULTS, stem, report, "\n".join(lines) + "\n"):
        print(path)
    return 0 if same_ranking else 1


if __name__ == "__main__":
    raise SystemExit(main())
