"""Command-line entry point: `dermmobile <command>`.

Each command lives in `dermmobile/commands/<name>.py` with HELP, `add_arguments(parser)`
and `run(args) -> int`. Those modules import nothing heavy at import time, so
`dermmobile --help` is instant; torch and converters load inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dermmobile import __version__, interrupts
from dermmobile.display import PrintableStream, printable
from dermmobile.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DermmobileError

COMMANDS = ["train", "evaluate", "export", "bench", "predict", "inspect", "android", "web", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermmobile",
        description="Fine-tune skin-condition classifiers and ship them to phones. A research tool, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"dermmobile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"dermmobile.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    # SIGTERM behaves like Ctrl-C: the same cleanup paths run (atomic writes roll back).
    interrupts.install()
    # Labels, paths and runtime messages come from files: no control character reaches the terminal raw.
    stdout, sys.stdout = sys.stdout, PrintableStream(sys.stdout)
    try:
        return int(args.run(args) or 0)
    except DermmobileError as exc:
        print(f"dermmobile {args.command}: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dermmobile {args.command}: interrupted; finished files are kept, partial ones removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_INTERNAL
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
