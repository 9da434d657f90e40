"""Why `dermmobile train` has the defaults it has: the candidate recipes on sd198-27, side by side.

    .venv/bin/python benchmarks/train_defaults.py [--work runs/train-defaults]     # trains every candidate
    .venv/bin/python benchmarks/train_defaults.py --collect NAME=RUN_DIR ...      # tabulates finished runs

Each candidate is `dermmobile train --data DATA --arch efficientnet_lite0` plus the options in
CANDIDATES (the script holds no training logic). Writes `train-defaults-<data>-<machine>.json/.md`
with held-out test and validation top-1, the best epoch, training time and img/s of each run,
and the machine's load average (runs on a shared machine are slower, not less accurate).
About 8 minutes per full fine-tuning run and 3 per head-only run on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _results import machine_tag, write_result

from dermmobile.bench.sweep import machine_info, versions

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
CANDIDATES = {
    "finetune (default)": [],
    "finetune, head only": ["--freeze-backbone"],
    "finetune + 1 warm-up epoch + label smoothing 0.1": ["--warmup-epochs", "1", "--label-smoothing", "0.1"],
    "paper, 8 epochs": ["--recipe", "paper", "--epochs", "8"],
}


def train_all(data: Path, work: Path) -> dict[str, Path]:
    from dermmobile.cli import main

    runs = {}
    for name, options in CANDIDATES.items():
        out = work / name.split(" (")[0].replace(" ", "-").replace(",", "").replace("+", "plus")
        code = main(["train", "--data", str(data), "--arch", "efficientnet_lite0", "--out", str(out), *options])
        if code != 0:
            raise SystemExit(f"{name}: dermmobile train exited {code}")
        runs[name] = out
    return runs


def row(name: str, run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    from dermmobile.checkpoint import read_meta

    args = read_meta(run / "best.safetensors").args
    keys = ("recipe", "epochs", "batch_size", "lr", "lr_decay", "warmup_epochs", "label_smoothing", "freeze_backbone")
    return {
        "name": name, "run": str(run), "settings": {k: args.get(k) for k in keys},
        "test_accuracy": metrics["test"]["accuracy"], "test_images": metrics["split_sizes"]["test"],
        "val_accuracy": metrics["val"]["accuracy"], "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
        "train_time_s": metrics["train_time_s"], "train_img_per_s": metrics["train_img_per_s"],
        "wall_time_s": metrics.get("wall_time_s"),
    }  # fmt: skip


def markdown(report: dict) -> str:
    from tabulate import tabulate

    rows = [
        [r["name"], f"**{r['test_accuracy']:.1%}**", f"{r['val_accuracy']:.1%}", f"{r['best_epoch']} of {r['epochs_run']}",
         f"{r['train_time_s']:.0f} s", f"{r['train_img_per_s']:.1f}", f"{r['wall_time_s']:.0f} s"]
        for r in report["runs"]
    ]  # fmt: skip
    headers = ["recipe", "held-out test top-1", "validation top-1", "best epoch", "train time", "img/s", "wall time"]
    machine = report["machine"]
    return "\n".join([
        f"# Training defaults: efficientnet_lite0 on {report['data']}", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load average {machine['load_average_1_5_15min']} "
        "(times on a loaded machine are upper bounds; accuracy does not depend on load). " + report.get("note", ""), "",
        tabulate(rows, headers, tablefmt="github", disable_numparse=True), "",
        "Test: the held-out split recorded in each checkpoint (20 % of each class, seed 0). Best epoch: lowest "
        "validation loss (early stopping). Settings per run are in the JSON file.", "",
        f"Versions: {report['versions']}", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/train-defaults"))
    parser.add_argument("--collect", nargs="+", metavar="NAME=RUN_DIR", help="tabulate finished runs instead of training")
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. how loaded the machine was)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.collect:
        runs = {item.split("=", 1)[0]: Path(item.split("=", 1)[1]) for item in args.collect}
    else:
        runs = train_all(args.data, args.work)
    report = {"data": args.data.name, "machine": machine_info(), "versions": versions(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "note": args.note,
              "runs": [row(n, r) for n, r in runs.items()]}  # fmt: skip
    tag = f"train-defaults-{args.data.name}-{machine_tag()}"
    args.out.mkdir(parents=True, exist_ok=True)
    _, md_path = write_result(args.out, tag, report, markdown(report))
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
