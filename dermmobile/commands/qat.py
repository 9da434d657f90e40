"""`dermmobile qat`: quantization-aware fine-tuning of a checkpoint for one target's int8 export.

Imports nothing heavy until `run`. The work is in dermmobile/qat.py.
"""

from __future__ import annotations

from pathlib import Path

HELP = "fine-tune a checkpoint with fake quantization for one target's int8 (quantization-aware training)"
EPILOG = (
    "The result exports only with `dermmobile export --checkpoint OUT/qat.safetensors --target TARGET --quantize int8`. "
    "dermmobile is a research tool, not a diagnosis."
)


def add_arguments(parser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--checkpoint", required=True, type=Path, help="the fine-tuned float checkpoint to start from")
    parser.add_argument("--target", required=True, help="tflite or executorch: whose int8 quantizer to train against")
    parser.add_argument("--data", type=Path, help="ImageFolder it was trained on. Default: the folder the checkpoint records")
    parser.add_argument("--epochs", type=int, default=3,
                        help="QAT epochs over the checkpoint's training split, with its recorded batch size, "
                             "augmentation and loss. Default: 3")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate, cosine to 0 over the epochs. Default: 1e-3")
    bn_help = "epochs that update BatchNorm statistics; later ones use the running statistics. Default: 1"
    parser.add_argument("--freeze-bn-after", type=int, default=1, help=bn_help)
    observer_help = "epochs whose batches move the int8 ranges; later ones train against fixed ranges. Default: 2"
    parser.add_argument("--freeze-observers-after", type=int, default=2, help=observer_help)
    parser.add_argument("--seed", type=int, default=0, help="seed for shuffling, augmentation and dropout. Default: 0")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="cpu", help="Default: cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads. Default: every core")
    parser.add_argument("--out", type=Path, help="run folder. Default: runs/<checkpoint folder>-qat-<target>")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args) -> int:
    import json
    import os

    # As in `dermmobile train`: idle OpenMP threads sleep instead of spinning on a shared machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from dermmobile.fsutil import check_output_dir
    from dermmobile.qat import QatConfig, train_qat

    out = args.out or Path("runs") / f"{args.checkpoint.resolve().parent.name}-qat-{args.target}"
    config = QatConfig(
        checkpoint=args.checkpoint, target=args.target, out=out, data=args.data, epochs=args.epochs,
        lr=args.lr, freeze_bn_after=args.freeze_bn_after, freeze_observers_after=args.freeze_observers_after, seed=args.seed,
        device=args.device, threads=args.threads,
    )  # fmt: skip
    check_output_dir(out)  # a file or a link there: say so before decoding and training
    result = train_qat(config)
    if args.json:
        print(json.dumps(result.metrics, indent=2, default=str))
        return 0
    fake, fp32 = result.metrics["fake_quant_val"], result.metrics["float_val"]
    if fake["images"]:
        print(
            f"validation ({fake['images']} images): fake-quantized {fake['accuracy']:.1%} vs float {fp32['accuracy']:.1%}; "
            f"agrees with the float model on {fake['agreement']:.1%}"
        )
    print(f"QAT checkpoint: {result.checkpoint}")
    print(f"next: dermmobile export --checkpoint {result.checkpoint} --target {args.target} --quantize int8")
    return 0
