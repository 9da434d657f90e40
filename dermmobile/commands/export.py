"""`dermmobile export`: a checkpoint to TorchScript, ONNX, TFLite, Core ML or ExecuTorch, with a manifest each."""

from __future__ import annotations

from pathlib import Path

HELP = "export a checkpoint to mobile formats (with quantization), checking parity on real images"


def add_arguments(parser) -> None:
    from dermmobile.quantization.options import WEIGHT_ROUNDINGS, Int8Options

    parser.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors checkpoint from `dermmobile train`")
    parser.add_argument("--target", default="all", help="torchscript, onnx, tflite, coreml, executorch or all (default)")
    parser.add_argument("--quantize", default="none", help="none (default), fp16, int8-dynamic or int8")
    parser.add_argument("--calib-data", type=Path, help="ImageFolder of real images to calibrate int8 on (required for int8)")
    parser.add_argument("--calib-count", type=int, default=128, help="calibration images, class-balanced (default 128)")
    int8 = parser.add_argument_group(
        "int8 (accuracy-aware)",
        "--calib-data is split three ways: calibration, tuning (chooses which layers stay float) and gate (judges "
        "the artifact once); the checkpoint's held-out test files always land in the gate",
    )
    defaults = Int8Options()
    int8.add_argument("--no-fallback", action="store_true", help="keep every layer int8 even when the gate fails")
    int8.add_argument(
        "--int8-logits",
        action="store_true",
        help="quantize the last layer too; by default it stays float so near-tie logits are not rounded together",
    )
    int8.add_argument(
        "--no-bias-correction",
        action="store_true",
        help="do not correct the biases for int8 weight rounding (dermmobile/quantization/bias_correction.py)",
    )
    int8.add_argument(
        "--weight-rounding",
        choices=WEIGHT_ROUNDINGS,
        default=defaults.weight_rounding,
        help="gptq: round each layer's weights so its output on the calibration images moves least "
        f"(dermmobile/quantization/gptq.py); nearest: as the toolchains do (default {defaults.weight_rounding})",
    )
    int8.add_argument(
        "--max-float-macs",
        type=float,
        default=defaults.max_float_macs,
        help=f"cap on the share of MACs the fallback may leave in float (default {defaults.max_float_macs})",
    )
    int8.add_argument(
        "--tune-count",
        type=int,
        default=defaults.tune_count,
        help=f"tuning images, class-balanced (default {defaults.tune_count})",
    )
    int8.add_argument(
        "--observer",
        default="",
        help="activation calibration: tflite/executorch histogram, minmax, "
        "moving-average; onnx minmax, entropy, percentile (default: each target's measured best)",
    )
    int8.add_argument(
        "--explain",
        action="store_true",
        help="write <artifact>.sensitivity.json/.md/.png (per-layer sensitivity) even when plain int8 passes",
    )
    parser.add_argument(
        "--check-data", type=Path, help="ImageFolder to check parity on (default: the checkpoint's held-out test split)"
    )
    parser.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"], help="image input layout of the artifact")
    parser.add_argument("--out", type=Path, help="output folder (default export/<checkpoint name>)")
    parser.add_argument("--timeout", type=float, help="run each conversion in a subprocess killed after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    import json
    import math
    import sys

    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.errors import BadInputError
    from dermmobile.exporter import converter_log, plan_export, run_plan
    from dermmobile.fsutil import check_output_dir
    from dermmobile.quantization.options import Int8Options

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise BadInputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not (math.isfinite(args.max_float_macs) and 0.0 <= args.max_float_macs <= 1.0):
        raise BadInputError(f"--max-float-macs is a share of the model's MACs in [0, 1], got {args.max_float_macs}")
    out = check_output_dir(args.out or Path("export") / args.checkpoint.stem)
    checkpoint = load_checkpoint(args.checkpoint)
    int8 = Int8Options(fallback=not args.no_fallback, max_float_macs=args.max_float_macs, tune_count=args.tune_count,
                       observer=args.observer, explain=args.explain, bias_correction=not args.no_bias_correction,
                       weight_rounding=args.weight_rounding, float_logits=not args.int8_logits)  # fmt: skip
    plan = plan_export(
        checkpoint, args.target, args.quantize, out, args.calib_data, args.calib_count, args.check_data, args.layout,
        args.timeout, int8=int8,
    )  # fmt: skip
    if plan.check is None:
        print("parity: no real images to check on (give --check-data or --calib-data); artifacts are marked unchecked")
    print(f"converter output goes to {converter_log(plan.out_dir)}", file=sys.stderr)
    outcomes = run_plan(checkpoint, plan)
    rows = [
        {
            "target": o.target,
            "quantization": o.quantization,
            "file": str(o.artifact.path) if o.artifact else None,
            "bytes": o.artifact.manifest.bytes if o.artifact else None,
            "seconds": o.seconds,
            "agreement": (o.parity or {}).get("agreement"),
            "max_abs_logit": (o.parity or {}).get("max_abs_logit"),
            "float_macs_share": o.artifact.manifest.float_macs_share if o.artifact else None,
            "status": o.artifact.manifest.status if o.artifact else "error",
            "error": o.error,
        }
        for o in outcomes
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_summary(rows))
    failed = [o for o in outcomes if not o.ok]
    return max((o.exit_code for o in failed), default=0)


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'target':<12} {'quant':<13} {'size':>9} {'time':>7} {'agree':>7}  status / file"]
    for row in rows:
        size = f"{row['bytes'] / 1e6:.2f} MB" if row["bytes"] else "-"
        agree = f"{row['agreement']:.1%}" if row["agreement"] is not None else "-"
        where = row["error"] if row["error"] else f"{row['status']}  {row['file']}"
        if row.get("float_macs_share"):
            where += f"  ({row['float_macs_share']:.1%} of MACs left in float)"
        lines.append(f"{row['target']:<12} {row['quantization']:<13} {size:>9} {row['seconds']:>6.1f}s {agree:>7}  {where}")
    return "\n".join(lines)
