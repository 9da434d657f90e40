"""How far each QAT int8 file sits from its graph computed with the runtime's integer arithmetic, and from fake quant.

    .venv/bin/python benchmarks/integer_reference.py --work WORK --checkpoint best.safetensors --note "..."

WORK is a `benchmarks/qat.py --work` folder (its qat-<target>/qat.safetensors and
export-qat/ files). On the float checkpoint's held-out test photos, per target, it compares
the file with: its fake-quantize model (benchmarks/qat.py's line), convert_pt2e's graph run by
torch, and the same graph run by dermmobile.quantization.integer_reference (the runtime's
integer rules). Where the file sits from the integer reference is what the reference does not
yet reproduce; where the fake-quantize model sits from it is what QAT's float arithmetic adds.
About two minutes on a 2-core CPU. Writes `integer-reference-<arch>-<data>-<machine>.json/.md`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import machine_tag, write_result
from qat import DATA, HERE, compare, held_out_photos, run_converted

from dermmobile.artifact import load_artifact
from dermmobile.bench.sweep import machine_info, versions
from dermmobile.checkpoint import load_checkpoint
from dermmobile.quantization import integer_reference
from dermmobile.targets import get_target
from dermmobile.targets.base import TorchRuntime, batched
from dermmobile.targets.pt2e import converted_qat

PAIRS = [  # (row key, reference, candidate, what it says)
    ("file_vs_integer", "integer", "file", "file vs integer reference"),
    ("file_vs_fake_quant", "fake_quant", "file", "file vs fake-quant"),
    ("file_vs_converted", "converted", "file", "file vs convert_pt2e run by torch"),
    ("integer_vs_fake_quant", "fake_quant", "integer", "integer reference vs fake-quant"),
]


def run_target(target: str, work: Path, check, labels: list[str]) -> dict:
    qat_checkpoint = load_checkpoint(work / f"qat-{target}" / "qat.safetensors")
    manifests = sorted((work / "export-qat").glob(f"*-{target}-int8.*.json"))  # the artifact's manifest, beside it
    if len(manifests) != 1:
        raise SystemExit(f"expected one {target} int8 QAT artifact in {work / 'export-qat'}, found {len(manifests)}: "
                         f"give --work a benchmarks/qat.py --work folder whose run finished")  # fmt: skip
    (manifest,) = manifests
    artifact = load_artifact(manifest.with_suffix(""), verify=True)
    runtime = get_target(target).load(artifact.path, artifact.manifest, threads=2)
    graph = converted_qat(qat_checkpoint.model, fold_quantize=False)
    logits = {
        "file": batched(runtime.predict, check.arrays, 16),
        "fake_quant": batched(TorchRuntime(qat_checkpoint.model).predict, check.arrays, 16),
        "converted": run_converted(graph, check.arrays),
        "integer": integer_reference.run(graph, check.arrays, target),
    }
    return {"target": target} | {key: compare(logits[a], logits[b], check, labels) for key, a, b, _ in PAIRS}


def markdown(report: dict) -> str:
    lines = [
        f"# The QAT int8 files against their graphs' integer arithmetic ({report['machine']['tag']})",
        "",
        f"{report['photos']} held-out photos ({report['data']}); QAT checkpoints and files from {report['work']}. "
        "Mean |logit difference|, top-1 agreement, flips.",
        "",
        f"CPU: {report['machine'].get('cpu', '?')}. {report['note']}",
        "",
        "| target | " + " | ".join(title for *_, title in PAIRS) + " |",
        "|---|" + "---|" * len(PAIRS),
    ]
    for row in report["targets"]:
        cells = [f"{row[key]['mean_abs_logit']:.4f}, {row[key]['agreement']:.1%} ({len(row[key]['flips'])})" for key, *_ in PAIRS]
        lines.append(f"| {row['target']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a benchmarks/qat.py --work folder")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the float checkpoint QAT started from")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--note", default="", help="what the reader should know about this run")
    parser.add_argument("--suffix", default="", help="appended to the results file's name (one per QAT run)")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    check = held_out_photos(checkpoint, args.data)
    targets = [run_target(target, args.work, check, checkpoint.meta.labels) for target in ("executorch", "tflite")]
    machine = machine_info() | {"tag": machine_tag()}
    report = {"machine": machine, "versions": versions(), "data": str(args.data), "work": str(args.work),
              "photos": len(check.names), "note": args.note, "targets": targets}  # fmt: skip
    stem = f"integer-reference-{checkpoint.meta.arch}-{args.data.name}-{machine['tag']}{args.suffix}"
    for path in write_result(args.out, stem, report, markdown(report)):
        print(path)


if __name__ == "__main__":
    main()
