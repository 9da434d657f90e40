"""`dermmobile demo`: synthetic data -> train -> export everywhere -> bench, in a few minutes."""

from __future__ import annotations

from pathlib import Path

HELP = "run the whole pipeline on built-in SYNTHETIC data (train, export to every format, bench)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    parser.add_argument("--arch", default="tiny_cnn", help="model to train (default tiny_cnn: seconds per epoch)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    parser.add_argument("--targets", default="all", help="comma-separated targets, or all (default)")


def run(args) -> int:
    from dermmobile.demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(out=args.out, arch=args.arch, epochs=args.epochs, targets=args.targets))
    failed = [e for e in summary["exports"] if e["error"]]
    print(f"\ndone in {summary['seconds']} s. {summary['note']}")
    print(f"checkpoint:   {summary['train']['checkpoint']}")
    print(f"artifacts:    {args.out / 'export'}  ({len(summary['exports']) - len(failed)} ok, {len(failed)} failed)")
    print(f"bench report: {summary['bench'].get('markdown', 'not written')}")
    print(f"summary:      {args.out / 'demo-summary.json'}")
    return 1 if failed else 0
