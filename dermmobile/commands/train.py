"""`dermmobile train`: fine-tune a classifier on an ImageFolder.

The options are built from `dermmobile.train_config.TrainConfig` (one place for every
default). Multi-GPU: `torchrun --nproc_per_node N -m dermmobile train ...` (one process per
GPU; --batch-size is per process). Imports nothing heavy until `run`.
"""

from __future__ import annotations

import argparse

HELP = "fine-tune a classifier on an ImageFolder (SGD, warm-up + cosine lr, early stopping, k-fold, DDP)"


def add_arguments(parser) -> None:
    from dermmobile.models import available_models
    from dermmobile.train_config import RECIPE_HELP, RECIPES, add_arguments

    recipes = "; ".join(f"{name}: {text}" for name, text in RECIPE_HELP.items())
    recipe_help = f"a named set of defaults that the options below override ({recipes}). Default: finetune"
    parser.add_argument("--recipe", choices=list(RECIPES), default="finetune", help=recipe_help)
    add_arguments(parser)
    size_help = "crop size in pixels (resize keeps the 256:224 ratio). Default: the model's ImageNet size"
    parser.add_argument("--image-size", type=int, default=None, help=size_help)
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "models (--arch): " + ", ".join(available_models()) + "\n"
        "Research tool, not a diagnosis: a trained model says nothing about clinical performance."
    )


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a shared
    # 2-core machine spinning threads starved the busy ones (tiny_cnn step 750 ms -> 72 ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from dermmobile.fsutil import check_output_dir
    from dermmobile.preprocess import PreprocessSpec
    from dermmobile.train_config import config_from_args
    from dermmobile.trainer import train

    spec = None
    if args.image_size:
        spec = PreprocessSpec(resize=round(args.image_size * 256 / 224), crop=args.image_size)
    config = config_from_args(args, args.recipe, spec=spec)
    check_output_dir(Path(config.out))  # a file or a link there: say so before training
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
