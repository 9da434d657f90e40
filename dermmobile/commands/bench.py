"""`dermmobile bench`: parity on a labeled set and single-image latency of every artifact vs the PyTorch model.

Imports nothing heavy here; the sweep imports torch only inside the jobs that need it, so
this command also runs where only onnxruntime and ai-edge-litert are installed.
"""

from __future__ import annotations

from pathlib import Path

from dermmobile.cores import usable_cores  # standard library only

HELP = "accuracy parity and latency of exported artifacts against the PyTorch model; JSON, Markdown and PNG reports"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--artifacts", type=Path, help="folder of exported artifacts (export/RUN); every manifest in it is benched"
    )
    parser.add_argument("--checkpoint", type=Path, help="the source checkpoint: its eager PyTorch model is the fp32 reference")
    parser.add_argument(
        "--data", type=Path, help="labeled ImageFolder; if it is the checkpoint's training root, its held-out test files are used"
    )
    parser.add_argument(
        "--split",
        choices=["test", "all"],
        default="test",
        help="test (default): the checkpoint's held-out files when --data is its training root; all: every image",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[usable_cores()],
        metavar="N",
        help="thread counts to time at, e.g. --threads 1 2 (default: all cores)",
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    parser.add_argument("--iters", type=int, default=100, help="timed single-image calls per row (default 100)")
    parser.add_argument(
        "--e2e-images", type=int, default=20, help="image files timed end to end: decode + preprocess + inference"
    )
    parser.add_argument(
        "--phone-runs",
        type=int,
        default=10,
        help="end-to-end runs on a 12 MP JPEG the bench makes from the first test photo (0 skips it; default 10)",
    )
    parser.add_argument(
        "--gemm-size", type=int, default=2048, help="matrix size of the fp32 GEMM peak measurement (default 2048)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of the reference")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every job in this process (faster start; peak RSS is then the whole process's)",
    )
    parser.add_argument(
        "--out", type=Path, help="report folder (default benchmarks/results/bench-<artifacts or checkpoint name>)"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.json",
        help="add rows measured on a phone (schema: dermmobile/bench/README.md); alone, merges into --out/bench.json",
    )


def _default_out(args) -> Path:
    source = args.artifacts or args.checkpoint
    if source is None:
        from dermmobile.errors import BadInputError

        raise BadInputError("--merge without --artifacts/--checkpoint needs --out: the report folder to merge into")
    name = Path(source).resolve().name.removesuffix(".safetensors")
    return Path("benchmarks/results") / f"bench-{name}"


def run(args) -> int:
    import sys

    from dermmobile.bench.merge import merge_rows, read_report, read_rows
    from dermmobile.bench.report import write_reports
    from dermmobile.display import printable
    from dermmobile.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, BadInputError
    from dermmobile.fsutil import check_output_dir

    out = check_output_dir(args.out or _default_out(args))  # before anything is measured
    merged = [row for file in args.merge for row in read_rows(file)]  # validated before any measuring
    if args.artifacts is None and args.checkpoint is None:
        if not merged:
            raise BadInputError("nothing to do: give --artifacts and/or --checkpoint with --data, or --merge FILE.json --out DIR")
        report = read_report(out / "bench.json")
    else:
        if args.data is None:
            raise BadInputError("--data DIR is required: the labeled images parity is measured on")
        from dermmobile.bench.sweep import BenchConfig, run_bench

        config = BenchConfig(
            data=args.data,
            artifacts=args.artifacts,
            checkpoint=args.checkpoint,
            threads=args.threads,
            warmup=args.warmup,
            iters=args.iters,
            split=args.split,
            e2e_images=args.e2e_images,
            phone_runs=args.phone_runs,
            compile=not args.no_compile,
            isolate=not args.in_process,
            gemm_size=args.gemm_size,
        )
        report = run_bench(config)
    if merged:
        merge_rows(report, merged)
    written = write_reports(report, out)
    print(f"wrote {', '.join(str(p) for p in written[:3])}" + (f" and {len(written) - 3} more" if len(written) > 3 else ""))
    if report.get("problems"):
        problems = "\n  ".join(printable(p) for p in report["problems"])
        print(f"dermmobile bench: gate failures or errors:\n  {problems}", file=sys.stderr)
        # A damaged or malformed artifact is bad input (2), as in inspect and predict; otherwise a gate failed (3).
        return EXIT_BAD_INPUT if report.get("refused") else EXIT_GATE_FAILED
    return 0
