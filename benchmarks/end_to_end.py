"""From photo to answer: decode + preprocess + inference of one artifact, preprocessing v1 vs v2, against inference alone.

    .venv/bin/python benchmarks/end_to_end.py export/RUN/efficientnet_lite0-tflite-int8.tflite --threads 2

Issue 13's yardstick: the end-to-end p50 (decode + preprocess + inference per file) over the
artifact's warm single-image inference p50, on the data set's photos and on 12 MP
phone-sized JPEGs (dermmobile.bench.phone_photo, made in a temporary folder: one with
sensor-like noise, the size of a real photo, and the plain upscale). Both
preprocessing algorithms run on the same artifact in alternating rounds, so machine load hits
them alike; the artifact's own spec is the one its manifest names, the other is the same
numbers with the other algorithm. Bars: <= 2x on data-set photos, <= 5x on the 12 MP JPEG.
Writes `results/end-to-end-<artifact>-<data>-<machine>.{json,md}`. The timing loop is
dermmobile.bench.latency.end_to_end, the one `dermmobile bench` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from _results import machine_tag  # stdlib and dermmobile.fsutil only: no runtime's pool starts

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
BARS = {"images": 2.0, "phone_12mp": 5.0, "phone_12mp_smooth": 5.0}  # end-to-end p50 / inference p50, issue 13
STEPS = ("decode", "preprocess", "inference", "total")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an exported artifact (or its .json manifest)")
    parser.add_argument("--data", type=Path, default=DATA, help="photos to time (an ImageFolder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=27, help="data-set photos per round, one per class first")
    parser.add_argument("--phone-runs", type=int, default=5, help="12 MP JPEG runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating v1/v2 rounds")
    parser.add_argument("--iters", type=int, default=200, help="timed inference calls for the inference p50")
    parser.add_argument("--out", type=Path, help="result file stem (default results/end-to-end-...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dermmobile.bench.latency import THREAD_ENV

    for name in THREAD_ENV:  # read by runtimes when their pools start, so before any import of one
        os.environ[name] = str(args.threads)

    from dermmobile.artifact import load_artifact
    from dermmobile.bench.latency import summarize, time_calls
    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.bench.worker import Job, loader
    from dermmobile.data import balanced_sample, scan_image_folder
    from dermmobile.fsutil import atomic_write_json, atomic_write_text
    from dermmobile.preprocess import PreprocessSpec

    load, check, _ = loader(Job("artifact", args.threads, path=str(args.artifact)))
    runtime = load()
    check(runtime)
    manifest = load_artifact(args.artifact).manifest
    own = PreprocessSpec.from_dict(manifest.preprocess)
    folder = scan_image_folder(args.data, expected_classes=manifest.labels)
    photos = [s.path for s in balanced_sample(folder.samples, args.images)]

    sample = own.load(photos[0])[None]
    time_calls(lambda: runtime.predict(sample), 10)
    inference = summarize(time_calls(lambda: runtime.predict(sample), args.iters))
    timings, phone_bytes = measure(runtime, own, photos, args)
    machine = machine_info()
    report = {
        "artifact": manifest.file,
        "format": manifest.format,
        "quantization": manifest.quantization,
        "runtime": getattr(runtime, "name", type(runtime).__name__),
        "threads": args.threads,
        "data": args.data.name,
        "phone_photos": {"size": [4032, 3024], "bytes": phone_bytes, "source": photos[0].name},
        "inference_ms": inference.to_dict(),
        "rows": summary_rows(timings, inference.p50, own.algorithm),
        "machine": machine,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    stem = args.out or HERE / "results" / (
        f"end-to-end-{Path(manifest.file).stem}-t{args.threads}-{args.data.name}-{machine_tag()}"
    )
    atomic_write_json(stem.with_name(stem.name + ".json"), report)
    atomic_write_text(stem.with_name(stem.name + ".md"), markdown(report))
    print(markdown(report))
    return 0


def measure(runtime, own, photos: list[Path], args) -> tuple[dict, dict]:
    """End-to-end timings per (algorithm, photo source) over alternating v1/v2 rounds, and the phone photos' sizes."""
    from dermmobile.bench.latency import end_to_end
    from dermmobile.bench.phone_photo import make_phone_photo
    from dermmobile.preprocess import ALGORITHM_V1, ALGORITHM_V2

    specs = {algorithm: dataclasses.replace(own, algorithm=algorithm) for algorithm in (ALGORITHM_V1, ALGORITHM_V2)}
    timings: dict[tuple[str, str], list] = {}
    with tempfile.TemporaryDirectory(prefix="end-to-end-") as tmp:
        phone = make_phone_photo(photos[0], Path(tmp) / "phone-12mp.jpg")
        smooth = make_phone_photo(photos[0], Path(tmp) / "phone-12mp-smooth.jpg", noise=0.0)
        sources = {"images": photos, "phone_12mp": [phone] * args.phone_runs, "phone_12mp_smooth": [smooth] * args.phone_runs}
        phone_bytes = {"phone_12mp": phone.stat().st_size, "phone_12mp_smooth": smooth.stat().st_size}
        for round_index in range(args.rounds):
            order = list(specs.items()) if round_index % 2 == 0 else list(specs.items())[::-1]
            for algorithm, spec in order:
                for source, files in sources.items():
                    print(f"round {round_index + 1}: {algorithm} on {source}", flush=True)
                    timings.setdefault((algorithm, source), []).append(end_to_end(runtime.predict, files, spec))
    return timings, phone_bytes


def summary_rows(timings: dict, inference_p50: float, own_algorithm: str) -> list[dict]:
    import numpy as np

    rows = []
    for (algorithm, source), runs in timings.items():
        # Each round's p50 per step, then the median over rounds: a round hit by a burst of load does not decide.
        steps = {step: float(np.median([getattr(run, step).p50 for run in runs])) for step in STEPS}
        ratio = steps["total"] / inference_p50
        rows.append({"algorithm": algorithm, "own_spec": algorithm == own_algorithm, "photos": source,
                     "files": sum(run.files for run in runs), "rounds": len(runs),
                     **{f"{k}_p50_ms": v for k, v in steps.items()}, "round_total_p50_ms": [run.total.p50 for run in runs],
                     "total_over_inference_p50": ratio, "bar": BARS[source], "within_bar": ratio <= BARS[source]})  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    from dermmobile.tables import markdown_table

    m = report["machine"]
    phones = report["phone_photos"]["bytes"]
    lines = [
        f"# From photo to answer: {report['artifact']} ({report['runtime']}, {report['threads']} threads)",
        "",
        f"{m['cpu']}, {m['cores']} cores, load {m['load_average_1_5_15min']} at the end. Inference alone (warm, same "
        f"image): p50 {report['inference_ms']['p50']:.2f} ms. Photos: {report['data']} ({report['rows'][0]['files']} files "
        f"over the rounds) and two 4032x3024 JPEGs made from {report['phone_photos']['source']}: phone_12mp with "
        f"sensor-like noise ({phones['phone_12mp'] / 1e6:.1f} MB, the low end of a real phone photo) and "
        f"phone_12mp_smooth, the plain upscale ({phones['phone_12mp_smooth'] / 1e6:.1f} MB; decoding costs in "
        "proportion to the file size). Per step: the p50 per file of each round, median over "
        f"{report['rows'][0]['rounds']} alternating rounds, ms.",
        "",
    ]
    cells = []
    for row in report["rows"]:
        name = row["algorithm"] + (" (the artifact's)" if row["own_spec"] else "")
        verdict = "within" if row["within_bar"] else "ABOVE"
        cells.append([name, row["photos"], f"{row['decode_p50_ms']:.1f}", f"{row['preprocess_p50_ms']:.1f}",
                      f"{row['inference_p50_ms']:.1f}", f"{row['total_p50_ms']:.1f}", f"{row['total_over_inference_p50']:.1f}x",
                      f"{verdict} {row['bar']:g}x"])  # fmt: skip
    headers = ["preprocessing", "photos", "decode", "preprocess", "inference", "end to end", "/ inference p50", "bar"]
    return "\n".join([*lines, markdown_table(cells, headers), ""])


if __name__ == "__main__":
    raise SystemExit(main())
