"""The founding paper's Tables 2-4 on our data: head-only vs full fine-tuning, k-fold, training time.

    .venv/bin/python benchmarks/paper_protocol.py [--quick] [--out benchmarks/results]

Trains with dermmobile.trainer (the script holds no training logic) and writes
`paper-protocol-<data>-<machine>.json/.md` plus the best model's confusion matrix
(`paper-table4-...png/.md`). About 25 minutes on a 2-core CPU; `--quick` (one small
recipe, 2 epochs, for CI) about 3. torchvision architectures need ImageNet weights that
this offline machine cannot download: pass `--weights-dir` with `<arch>.pth` files to
include them, otherwise they are listed as not run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

from _results import machine_tag, write_result

from dermmobile.bench.sweep import machine_info, versions
from dermmobile.tables import markdown_table
from dermmobile.trainer import TrainConfig, train

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
# The paper (9 private classes, ResNet/DenseNet): last layer only peaked at 68 %, full fine-tuning 77-84 %.
PAPER = {"head-only": "68 % (best network, validation)", "full": "77-84 % (four networks, validation)"}
RECIPES = {
    "head-only": {"freeze_backbone": True, "epochs": 5, "lr": 0.01, "lr_decay": "cosine"},
    "full": {"epochs": 10, "lr": 0.01, "lr_decay": "cosine"},
    "head-only 5-fold": {"freeze_backbone": True, "epochs": 5, "lr": 0.01, "lr_decay": "cosine", "folds": 5},
}
QUICK = {"head-only": {"freeze_backbone": True, "epochs": 2, "lr": 0.01, "lr_decay": "cosine"}}
OTHER_ARCHS = ["mobilenet_v3_large", "resnet18"]


def run_recipe(name: str, arch: str, weights: str, settings: dict, data: Path, work: Path) -> dict:
    config = TrainConfig(data=data, arch=arch, out=work / f"{arch}-{name.replace(' ', '-')}", weights=weights, **settings)
    started = time.perf_counter()
    result = train(replace(config, progress=False))
    metrics = result.metrics
    row = {
        "recipe": name,
        "arch": arch,
        "weights": weights,
        "settings": settings,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if "folds" in settings:
        folds = [{k: f[k] for k in ("fold", "val_accuracy", "test_accuracy")} for f in metrics["per_fold"]]
        row |= {
            "val_accuracy_mean": metrics["val_accuracy_mean"],
            "val_accuracy_std": metrics["val_accuracy_std"],
            "per_fold": folds,
        }
    else:
        keys = ("epochs_run", "train_time_s", "train_img_per_s")
        row |= {k: metrics[k] for k in keys} | {"split": metrics["split_sizes"], "run": str(result.out)}
        row |= {"val_accuracy": metrics["val"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"]}
    return row


def markdown(report: dict) -> str:
    lines = [
        f"# Paper protocol on {report['data']['name']} ({report['machine']['cores']}-core {report['machine']['arch']} CPU)",
        "",
        f"Data: {report['data']['note']}",
        "",
    ]
    cells = []
    for row in report["runs"]:
        if "error" in row:
            cells.append([row["recipe"], row["arch"], f"not run: {row['error']}", "", "", "", "", ""])
        elif "val_accuracy_mean" in row:
            val = f"{row['val_accuracy_mean']:.1%} ± {row['val_accuracy_std']:.1%} (5-fold)"
            epochs, seconds = row["settings"]["epochs"], row["wall_time_s"]
            cells.append([row["recipe"], row["arch"], "-", val, epochs, f"{seconds:.0f} s, all folds", "-", "5-fold CV"])
        else:
            cells.append([row["recipe"], row["arch"], f"**{row['test_accuracy']:.1%}**", f"{row['val_accuracy']:.1%}",
                          row["epochs_run"], f"{row['train_time_s']:.0f} s", f"{row['train_img_per_s']:.1f}",
                          PAPER.get(row["recipe"], "")])  # fmt: skip
    headers = ["recipe", "arch", "held-out test top-1", "validation top-1", "epochs", "train time", "img/s",
               "the paper (different data)"]  # fmt: skip
    lines += [markdown_table(cells, headers), "", f"Versions: {report['versions']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, default=Path("runs/paper-protocol"), help="run folders (checkpoints, logs)")
    parser.add_argument("--weights-dir", type=Path, help="folder of <arch>.pth ImageNet state dicts for torchvision models")
    parser.add_argument("--quick", action="store_true", help="CI size: one recipe, 2 epochs")
    args = parser.parse_args(argv)
    runs = []
    for name, settings in (QUICK if args.quick else RECIPES).items():
        runs.append(run_recipe(name, "efficientnet_lite0", "DEFAULT", settings, args.data, args.work))
    for arch in [] if args.quick else OTHER_ARCHS:
        weights = args.weights_dir / f"{arch}.pth" if args.weights_dir else None
        if weights is None or not weights.is_file():
            runs.append(
                {"recipe": "full", "arch": arch, "error": "needs torchvision ImageNet weights (no internet here); --weights-dir"}
            )
            continue
        runs.append(run_recipe("full", arch, str(weights), RECIPES["full"], args.data, args.work))
    tag = f"{args.data.name}-{machine_tag()}" + ("-quick" if args.quick else "")
    report = {
        "data": {"name": args.data.name, "root": str(args.data),
                 "note": "27-class SD-198 subset (713 clinical photos), not the paper's private 9-class set; chance 3.7 %"},
        "machine": machine_info(), "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out, f"paper-protocol-{tag}", report, markdown(report))
    best = max((r for r in runs if "test_accuracy" in r), key=lambda r: r["test_accuracy"])
    for suffix in ("md", "png"):  # the paper's Table 4: the best model's confusion matrix
        shutil.copyfile(Path(best["run"]) / f"confusion-test.{suffix}", args.out / f"paper-table4-{best['arch']}-{tag}.{suffix}")
    print(f"wrote {args.out / f'paper-protocol-{tag}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
