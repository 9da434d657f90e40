"""`dermmobile inspect`: print an artifact's manifest, verify its sha256, list its runtime I/O."""

from __future__ import annotations

from pathlib import Path

HELP = "show an artifact's manifest, verify its sha256 and list inputs/outputs as its runtime reports them"


def add_arguments(parser) -> None:
    parser.add_argument("artifact", type=Path, help="an exported file or its .json manifest")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON only")


def run(args) -> int:
    import json

    from dermmobile.artifact import load_artifact
    from dermmobile.errors import MissingBackendError
    from dermmobile.runtime import open_runtime

    artifact = load_artifact(args.artifact)
    manifest = artifact.manifest
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    print(f"{artifact.path}  sha256 verified ({manifest.sha256[:16]}...)  {manifest.bytes / 1e6:.2f} MB")
    print(f"format {manifest.format}, quantization {manifest.quantization}, arch {manifest.arch}, status {manifest.status}")
    print(f"labels ({len(manifest.labels)}): {', '.join(manifest.labels)}")
    for role, spec in (("input", manifest.input), ("output", manifest.output)):
        quant = f" scale={spec.scale} zero_point={spec.zero_point}" if spec.scale is not None else ""
        print(f"manifest {role}: {spec.name} {spec.shape} {spec.dtype} {spec.layout}{quant}")
    print(f"preprocess: {json.dumps(manifest.preprocess)}")
    if manifest.calibration:
        print(f"calibration: {manifest.calibration.get('count')} images, per class {manifest.calibration.get('per_class')}")
    if manifest.op_counts:
        counts = manifest.op_counts
        print(f"compute ops in the file: {counts.get('int8')} int8, {counts.get('dynamic')} dynamic, {counts.get('float')} float")
    if manifest.float_layers is not None:
        share = manifest.float_macs_share or 0.0
        kept = ", ".join(manifest.float_layers) or "none"
        fallback = manifest.fallback or {}
        why = "the fallback's choice"
        if manifest.qat:
            why = "as quantization-aware training left them"
        elif fallback.get("float_logits"):
            why = "the logits layer and the fallback's choice"
        print(f"layers left in float ({why}): {len(manifest.float_layers)} ({share:.1%} of MACs): {kept}")
        if fallback:
            tried = [a for a in fallback.get("attempts", []) if a.get("source") == "artifact"]
            print(f"fallback: {fallback.get('note')} ({len(tried)} artifacts tried on the tuning images)")
            if fallback.get("sensitivity_report"):
                print(f"per-layer sensitivity: {artifact.path.parent / fallback['sensitivity_report']}")
    for name, record in (("tuning", manifest.tuning_images), ("gate", manifest.gate_images)):
        if record:
            print(f"{name} images: {record.get('count')} (files sha256 {str(record.get('files_sha256'))[:16]}...)")
    if manifest.parity:
        parity = {
            k: manifest.parity.get(k)
            for k in ("images", "agreement", "max_abs_logit", "passed", "status")
            if k in manifest.parity
        }
        print(f"parity at export: {parity}")
    try:
        runtime = open_runtime(artifact)  # exit 2 when the file is damaged or does not fit its manifest
    except MissingBackendError as exc:
        print(f"runtime: not loaded ({exc})")
        return 0
    describe = getattr(runtime, "describe", None)
    if describe:
        for line in describe():
            print(f"runtime {line}")
    return 0
