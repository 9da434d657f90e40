"""Preprocessing v1 vs v2 side by side: accuracy, agreement and time, and v2's reduced-decode threshold.

    .venv/bin/python benchmarks/preprocess_spec.py --checkpoint /work/refmodels/lite0-full/best.safetensors

One fp32 checkpoint, its own held-out test split of sd198-27 (and every image, for
agreement), four ways to turn a file into its input:

- `v1`: dermmobile-preprocess-v1 (full decode, float64 filter): what the model was exported with until v2;
- `v2-full-decode`: v2's resize and table, every file decoded at full size;
- `v2` (the spec): JPEGs decoded reduced while the shorter side stays >= resize;
- `v2-reduce-2x`: the candidate threshold 2 x resize (less reduction).

Per variant: held-out top-1, top-1 agreement with v1 and the logit differences, and the
decode and preprocess times per file on the data set's photos and on a 12 MP phone-sized
JPEG made from one of them (dermmobile.bench.phone_photo). `--exported M.json ...` adds
the parity gates measured at export by artifacts of this model exported under each spec
(export it twice: the checkpoint, and a copy whose metadata names the other algorithm),
read from their manifests. Writes
`results/preprocess-spec-<arch>-<data>-<machine>.{json,md}`. Times are wall clock of one
process; on a busy machine compare the variants with each other, not with other runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import machine_tag

from dermmobile.bench.phone_photo import make_phone_photo
from dermmobile.bench.sweep import machine_info, select_samples, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.data import decode_image
from dermmobile.evaluate import predict_logits
from dermmobile.fsutil import atomic_write_json, atomic_write_text
from dermmobile.preprocess import ALGORITHM_V1, ALGORITHM_V2, PreprocessSpec
from dermmobile.tables import markdown_table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    spec: PreprocessSpec
    min_side: int | None  # JPEG reduced decode keeps the shorter side >= this; None: full decode

    def decode(self, path: Path):
        return decode_image(path, min_side=self.min_side)


def variants(base: PreprocessSpec) -> list[Variant]:
    v1 = dataclasses.replace(base, algorithm=ALGORITHM_V1)
    v2 = dataclasses.replace(base, algorithm=ALGORITHM_V2)
    return [
        Variant("v1", v1, None),
        Variant("v2-full-decode", v2, None),
        Variant("v2", v2, v2.decode_min_side),  # the spec: what v2.load does
        Variant("v2-reduce-2x", v2, 2 * v2.resize),
    ]


def run_variant(variant: Variant, paths: list[Path]) -> tuple[np.ndarray, list[float], list[float]]:
    """(N x 3 x crop x crop inputs, decode ms per file, preprocess ms per file)."""
    arrays, decode_ms, preprocess_ms = [], [], []
    clock = time.perf_counter_ns
    for path in paths:
        start = clock()
        rgb = variant.decode(path)
        decoded = clock()
        arrays.append(variant.spec.array(rgb))
        done = clock()
        decode_ms.append((decoded - start) / 1e6)
        preprocess_ms.append((done - decoded) / 1e6)
    return np.stack(arrays), decode_ms, preprocess_ms


def phone_timing(variant: Variant, photo: Path, repeats: int) -> dict:
    _, decode_ms, preprocess_ms = run_variant(variant, [photo] * repeats)
    size = variant.decode(photo).size
    return {"decoded_size": list(size), "decode_ms_p50": statistics.median(decode_ms),
            "preprocess_ms_p50": statistics.median(preprocess_ms)}  # fmt: skip


def compare(logits: np.ndarray, reference: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> dict:
    predicted, expected = logits[rows].argmax(1), reference[rows].argmax(1)
    return {
        "images": len(rows),
        "top1": float((predicted == targets[rows]).mean()),
        "agreement_with_v1": float((predicted == expected).mean()),
        "flips": int((predicted != expected).sum()),
        "max_abs_logit_diff": float(np.abs(logits[rows] - reference[rows]).max()),
        "mean_abs_logit_diff": float(np.abs(logits[rows] - reference[rows]).mean()),
    }


VARIANT_COLUMNS = ("variant", "JPEG decode", "held-out top-1", "agreement with v1 (held-out)", "agreement with v1 (all)",
                   "flips (all)", "max abs logit diff (all)", "sd198 decode ms", "sd198 preprocess ms", "12 MP decoded size",
                   "12 MP decode ms", "12 MP preprocess ms")  # fmt: skip


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Preprocessing v1 vs v2: {report['arch']} on {report['data']} "
        f"({m['cores']}-core {m['arch']}, load {m['load_average_1_5_15min']})",
        "",
        f"Checkpoint `{report['checkpoint']}` (trained with {report['checkpoint_algorithm']}). Held-out: the "
        f"{report['held_out_images']} test photos recorded in the checkpoint; all: every photo ({report['all_images']}, "
        "training photos included: agreement only). Times: p50 per file, one process, "
        f"machine {'busy' if (m['load_average_1_5_15min'] or [0])[0] > 1.5 else 'idle'} (compare rows with each other).",
        "",
    ]
    cells = []
    for v in report["variants"]:
        held, every, phone = v["held_out"], v["all"], v["phone_photo"]
        cells.append([v["name"], v["decode"], f"{held['top1']:.1%}", f"{held['agreement_with_v1']:.1%}",
                      f"{every['agreement_with_v1']:.1%}", every["flips"], f"{every['max_abs_logit_diff']:.3f}",
                      f"{v['decode_ms_p50']:.1f}", f"{v['preprocess_ms_p50']:.1f}",
                      f"{phone['decoded_size'][0]}x{phone['decoded_size'][1]}", f"{phone['decode_ms_p50']:.1f}",
                      f"{phone['preprocess_ms_p50']:.1f}"])  # fmt: skip
    lines.append(markdown_table(cells, VARIANT_COLUMNS))
    lines += ["", "The v2 row is the spec (`dermmobile-preprocess-v2`); the other v2 rows are the candidates it was chosen from."]
    if report["exported"]:
        lines += [
            "",
            "## Parity gates at export, per preprocessing spec (from the artifacts' manifests)",
            "",
        ]
        cells = [[e["file"], e["algorithm"], e["status"], e["images"], f"{e['agreement']:.2%}", e["flips"],
                  f"{e['accuracy']:.1%}", f"{e['reference_accuracy']:.1%}", f"{e['max_abs_logit']:.3f}"]
                 for e in report["exported"]]  # fmt: skip
        headers = ["artifact", "preprocessing", "status", "images", "agreement", "flips", "top-1", "reference top-1",
                   "max abs logit"]  # fmt: skip
        lines.append(markdown_table(cells, headers))
    return "\n".join(lines)


def exported(manifests: list[Path]) -> list[dict]:
    """The export-time parity each manifest records, with the spec it was exported under."""
    from dermmobile.artifact import load_artifact

    rows = []
    for path in manifests:
        m = load_artifact(path).manifest
        parity = m.parity or {}
        keys = ("images", "agreement", "accuracy", "reference_accuracy", "max_abs_logit")
        rows.append({"file": m.file, "format": m.format, "quantization": m.quantization, "status": m.status,
                     "algorithm": m.preprocess.get("algorithm"), "checkpoint_sha256": m.checkpoint_sha256,
                     "flips": len(parity.get("flips", [])), **{k: parity.get(k) for k in keys}})  # fmt: skip
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an fp32 checkpoint trained on --data")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--phone-repeats", type=int, default=7, help="timed decodes of the 12 MP JPEG per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    parser.add_argument("--exported", type=Path, nargs="*", default=[], metavar="MANIFEST",
                        help="this model's artifacts exported under v1 and v2: their export-time parity")  # fmt: skip
    parser.add_argument("--out", type=Path, help="result file stem (default results/preprocess-spec-...)")
    return parser.parse_args(argv)


def measure_variant(variant, model, paths, targets, rows: dict[str, np.ndarray], reference, photo: Path, repeats: int):
    """Preprocess every photo under `variant`; return (its result row, its logits)."""
    print(f"{variant.name}: preprocessing {len(paths)} photos", flush=True)
    arrays, decode_ms, preprocess_ms = run_variant(variant, paths)
    logits = predict_logits(model, arrays, batch_size=32)
    reference = logits if reference is None else reference
    row = {
        "name": variant.name,
        "spec": variant.spec.to_dict(),
        "decode": "full" if variant.min_side is None else f"JPEG reduced while shorter side >= {variant.min_side}",
        **{name: compare(logits, reference, targets, subset) for name, subset in rows.items()},
        "decode_ms_p50": statistics.median(decode_ms),
        "preprocess_ms_p50": statistics.median(preprocess_ms),
        "phone_photo": phone_timing(variant, photo, repeats),
    }  # fmt: skip
    print(f"  {row['held_out']}", flush=True)
    return row, logits


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    folder, held_out, _ = select_samples(args.data, checkpoint.meta.labels, checkpoint.meta.data, "test")
    held_names = {s.path for s in held_out}
    samples = folder.samples
    paths = [s.path for s in samples]
    targets = np.array([s.label for s in samples])
    held_rows = np.array([i for i, s in enumerate(samples) if s.path in held_names])
    all_rows = np.arange(len(samples))
    results, reference = [], None
    with tempfile.TemporaryDirectory(prefix="preprocess-spec-") as tmp:
        photo = make_phone_photo(held_out[0].path, Path(tmp) / "phone-12mp.jpg")
        rows = {"held_out": held_rows, "all": all_rows}
        for variant in variants(checkpoint.meta.spec):
            row, logits = measure_variant(variant, checkpoint.model, paths, targets, rows, reference, photo, args.phone_repeats)
            reference = logits if reference is None else reference
            results.append(row)
        photo_bytes = photo.stat().st_size
    machine = machine_info()
    arch = checkpoint.meta.arch
    report = {
        "arch": arch,
        "checkpoint": str(args.checkpoint),
        "checkpoint_algorithm": checkpoint.meta.spec.algorithm,
        "data": args.data.name,
        "held_out_images": len(held_rows),
        "all_images": len(all_rows),
        "phone_photo": {"size": [4032, 3024], "bytes": photo_bytes, "source": held_out[0].path.name},
        "machine": machine,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": results,
        "exported": exported(args.exported),
    }
    stem = args.out or HERE / "results" / f"preprocess-spec-{arch}-{args.data.name}-{machine_tag()}"
    atomic_write_json(stem.with_suffix(".json"), report)
    atomic_write_text(stem.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
