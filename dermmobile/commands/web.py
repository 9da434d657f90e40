"""`dermmobile web`: build the web demo for a .tflite or .onnx artifact, and optionally serve it on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

HELP = "build the web demo (the model in a phone's browser) for a .tflite or .onnx artifact; --serve serves it on 127.0.0.1"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--artifact", type=Path, required=True, help="a .tflite or .onnx file written by `dermmobile export` (or its .json)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=[],
        metavar="IMG",
        help="a few real photos to bundle as golden samples (the page's self-check and benchmark use them)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the site folder (new, empty, or a previous web build)")
    parser.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve (default %(default)s; 0 picks a free one)")
    parser.add_argument(
        "--demo", type=Path, default=None, help="the web_demo folder with node_modules installed (default: the checkout's)"
    )


def run(args) -> int:
    from dermmobile.web import DEMO_DIR, build_site, make_server

    site = build_site(args.artifact, args.images, args.out, demo=args.demo or DEMO_DIR)
    print(f"site:     {site.folder} ({site.runtime})")
    twin = " (uint8-I/O twin of the int8 artifact: LiteRT.js takes no int8 tensors)" if site.uint8_twin else ""
    print(f"model:    {site.model}{twin}")
    print(f"golden:   {site.golden} ({site.samples} images)" if site.golden else "golden:   none (--images adds the self-check)")
    if not args.serve:
        print(f"next: dermmobile web --artifact {args.artifact} --out {args.out} --serve  (or any static host sending COOP/COEP)")
        return 0
    server = make_server(site.folder, args.port)
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/ (127.0.0.1 only; a phone on USB: adb reverse tcp:{port} tcp:{port}); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")  # Ctrl-C is how serving ends: not an error
    finally:
        server.server_close()
    return 0
