"""`dermmobile android`: put a TFLite artifact, its manifest and golden samples into android_demo's assets."""

from __future__ import annotations

from pathlib import Path

HELP = "copy a .tflite artifact, its manifest and golden samples (from --images) into the Android demo app's assets"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--artifact", type=Path, required=True, help="the .tflite file written by `dermmobile export` (or its .json)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        metavar="IMG",
        help="a few real photos to bundle as golden samples (the app's benchmark and instrumentation test check them)",
    )
    parser.add_argument(
        "--app", type=Path, default=Path("android_demo"), help="the android_demo project folder (default: %(default)s)"
    )


def run(args) -> int:
    from dermmobile.android import install_into_app

    installed = install_into_app(args.artifact, args.images, args.app)
    print(f"model:    {installed.artifact}")
    print(f"manifest: {installed.manifest}")
    print(f"golden:   {installed.golden} ({installed.samples} images)")
    print(f"next: open {args.app} in Android Studio and run the app (see {args.app}/README.md)")
    return 0
