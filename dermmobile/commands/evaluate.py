"""`dermmobile evaluate`: a checkpoint's accuracy, per class, and confusion matrix on labelled images.

On the checkpoint's own training folder it scores the held-out test split recorded in the
checkpoint; on any other folder with the same classes, every image. Imports nothing heavy
until `run`.
"""

from __future__ import annotations

HELP = "accuracy overall and per class + confusion matrix of a checkpoint (Markdown, JSON, PNG)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint from `dermmobile train`")
    parser.add_argument("--data", required=True, help="ImageFolder root with the checkpoint's classes")
    parser.add_argument("--split", choices=["auto", "test", "all"], default="auto",
                        help="auto: the recorded test split on the training folder, else all images. Default: auto")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for evaluation.md/.json/.png. Default: print only")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"], default="cpu", help="Default: cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from dermmobile.display import printable
    from dermmobile.evaluate import evaluate_checkpoint
    from dermmobile.fsutil import check_output_dir

    if args.out:
        check_output_dir(Path(args.out))  # before any image is read

    out = Path(args.out) if args.out else None
    result = evaluate_checkpoint(Path(args.checkpoint), Path(args.data), split=args.split, out=out, device=args.device,
                                 progress="evaluating")  # fmt: skip
    for path, reason in result.bad:
        print(printable(f"skipped unreadable image {path}: {reason}"), file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.markdown())
    return 0
