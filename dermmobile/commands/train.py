"""`dermmobile train`: fine-tune a classifier on an ImageFolder (the paper's protocol by default).

Multi-GPU: `torchrun --nproc_per_node N -m dermmobile train ...` (one process per GPU;
--batch-size is per process). Imports nothing heavy until `run`.
"""

from __future__ import annotations

import argparse

HELP = "fine-tune a classifier on an ImageFolder (SGD, lr decay, early stopping, k-fold, DDP)"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="ImageFolder root: DIR/<class name>/<image>")
    parser.add_argument("--arch", required=True, help="model name (see `dermmobile inspect --models`), e.g. efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT",
                        help="DEFAULT (ImageNet; bundled for efficientnet_lite0, downloaded for torchvision models), "
                             "a local .pth/.safetensors state dict, or none (random init). Default: DEFAULT")  # fmt: skip
    parser.add_argument("--freeze-backbone", action="store_true", help="train the new head only (backbone frozen, in eval mode)")
    parser.add_argument("--epochs", type=int, default=30, help="maximum epochs (early stopping may end sooner). Default: 30")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (per process under torchrun). Default: 16")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate. Default: 1e-3")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum. Default: 0.9")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay. Default: 1e-4")
    parser.add_argument("--lr-decay", choices=["step", "cosine", "none"], default="step",
                        help="step: x0.1 every --lr-step epochs; cosine: to 0 over --epochs. Default: step")  # fmt: skip
    parser.add_argument("--lr-step", type=int, default=7, help="epochs between step decays. Default: 7")
    parser.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without a lower validation loss. Default: 5"
    )
    parser.add_argument(
        "--folds", type=int, default=0, help="K-fold cross-validation on the non-test images (K >= 2). Default: off"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of the non-test images per class for validation. Default: 0.1"
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each class held out for testing. Default: 0.2")
    parser.add_argument(
        "--device", choices=["auto", "cuda", "mps", "cpu"], default="auto", help="Default: auto (CUDA, then MPS, then CPU)"
    )
    amp_help = "mixed precision (bf16, or fp16 with loss scaling). Default: on for CUDA, off elsewhere"
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=amp_help)
    parser.add_argument("--workers", type=int, default=0, help="threads that decode and augment images. Default: one per core")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads. Default: every core")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, init, shuffling and augmentation. Default: 0")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop size in pixels (resize keeps the 256:224 ratio). Default: the spec's 224")  # fmt: skip
    parser.add_argument("--balance", choices=["loss", "none"], default="loss", help="class-weighted loss. Default: loss")
    parser.add_argument("--out", default=None, help="run directory. Default: runs/<arch>")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a shared
    # 2-core machine spinning threads starved the busy ones (tiny_cnn step 750 ms -> 72 ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from dermmobile.fsutil import check_output_dir
    from dermmobile.preprocess import PreprocessSpec
    from dermmobile.trainer import TrainConfig, train

    check_output_dir(Path(args.out or f"runs/{args.arch}"))  # a file or a link there: say so before training

    spec = PreprocessSpec()
    if args.image_size:
        spec = PreprocessSpec(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    config = TrainConfig(
        data=Path(args.data), arch=args.arch, out=Path(args.out or f"runs/{args.arch}"), weights=args.weights,
        freeze_backbone=args.freeze_backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_decay=args.lr_decay, lr_step=args.lr_step,
        patience=args.patience, folds=args.folds, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        device=args.device, amp=args.amp, workers=args.workers, threads=args.threads, seed=args.seed, resume=args.resume,
        balance=args.balance, spec=spec,
    )  # fmt: skip
    result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    metrics = result.metrics
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    if config.folds:
        for fold in metrics["per_fold"]:
            print(f"fold {fold['fold']}: validation accuracy {fold['val_accuracy']:.1%} (best epoch {fold['best_epoch']})")
        mean, std = metrics["val_accuracy_mean"], metrics["val_accuracy_std"]
        print(f"validation accuracy {mean:.1%} ± {std:.1%} over {config.folds} folds")
    else:
        best, run, val = metrics["best_epoch"], metrics["epochs_run"], metrics["val"]["accuracy"]
        print(f"best epoch {best} of {run}: validation accuracy {val:.1%}")
        if "test" in metrics:
            print(f"held-out test accuracy {metrics['test']['accuracy']:.1%} on {metrics['split_sizes']['test']} images")
        print(f"{metrics['train_img_per_s']} img/s training on {metrics['device']}, wall time {metrics['wall_time_s']} s")
    if result.bad_images:
        print(f"skipped {len(result.bad_images)} unreadable images (listed in metrics.json)")
    print(f"checkpoint: {result.checkpoint}")
    return 0
