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
    from dermmobile.qat_config import LOSSES, cli_defaults

    default = cli_defaults()
    parser.epilog = EPILOG
    parser.add_argument("--checkpoint", required=True, type=Path, help="the fine-tuned float checkpoint to start from")
    parser.add_argument("--target", required=True, help="tflite or executorch: whose int8 quantizer to train against")
    parser.add_argument("--data", type=Path, help="ImageFolder it was trained on. Default: the folder the checkpoint records")
    parser.add_argument("--epochs", type=int, default=default["epochs"],
                        help="QAT epochs over the checkpoint's training split, with its recorded batch size and "
                             f"augmentation. Default: {default['epochs']}")  # fmt: skip
    parser.add_argument(
        "--lr",
        type=float,
        default=default["lr"],
        help=f"SGD learning rate, cosine to 0 over the epochs. Default: {default['lr']:g}",
    )
    parser.add_argument("--loss", choices=LOSSES, default=default["loss"],
                        help="distill: fit the float checkpoint's logits on each batch (what int8 must agree with); "
                             f"labels: the float run's own label loss. Default: {default['loss']}")  # fmt: skip
    bn_help = ("epochs that update BatchNorm statistics; later ones use the running statistics. "
               f"Default: {default['freeze_bn_after']}")  # fmt: skip
    parser.add_argument("--freeze-bn-after", type=int, default=default["freeze_bn_after"], help=bn_help)
    observer_help = ("epochs whose batches move the int8 ranges; later ones train against fixed ranges. "
                     f"Default: {default['freeze_observers_after']}")  # fmt: skip
    parser.add_argument("--freeze-observers-after", type=int, default=default["freeze_observers_after"], help=observer_help)
    logits_help = "train and export the last layer int8 too; by default it stays float, as in every int8 export"
    parser.add_argument("--int8-logits", action="store_true", help=logits_help)
    seed_help = f"seed for shuffling, augmentation and dropout. Default: {default['seed']}"
    parser.add_argument("--seed", type=int, default=default["seed"], help=seed_help)
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default=default["device"],
                        help=f"Default: {default['device']}")  # fmt: skip
    parser.add_argument("--threads", type=int, default=default["threads"], help="torch CPU threads. Default: every core")
    parser.add_argument("--out", type=Path, help="run folder. Default: runs/<checkpoint folder>-qat-<target>")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args) -> int:
    import json
    import os

    # As in `dermmobile train`: idle OpenMP threads sleep instead of spinning on a shared machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from dermmobile.fsutil import check_output_dir
    from dermmobile.qat import train_qat
    from dermmobile.qat_config import QatConfig

    out = args.out or Path("runs") / f"{args.checkpoint.resolve().parent.name}-qat-{args.target}"
    config = QatConfig(
        checkpoint=args.checkpoint, target=args.target, out=out, data=args.data, epochs=args.epochs,
        lr=args.lr, freeze_bn_after=args.freeze_bn_after, freeze_observers_after=args.freeze_observers_after, seed=args.seed,
        device=args.device, threads=args.threads, float_logits=not args.int8_logits, loss=args.loss,
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
