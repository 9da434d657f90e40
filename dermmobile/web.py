"""The web demo's Python side: build the static site a phone's browser runs, and serve it on 127.0.0.1.

`build_site` assembles a folder with no build step and nothing fetched at run time:

    index.html, *.js, *.css   the page (web_demo/, plain ES modules and an import map)
    site.json                 what the page loads: model, manifest, golden index, runtime, limits
    model/<file>, model/manifest.json
                              the artifact and its manifest, verified with load_artifact; a TFLite
                              artifact with int8 I/O is replaced by its uint8-I/O twin
                              (targets/tflite_uint8_io.py: LiteRT.js takes no int8 tensors), checked
                              here to give the int8 artifact's logits exactly
    golden/                   golden samples (dermmobile.android's writer), logits from the
                              artifact's own Python runtime: what the browser must reproduce
    runtime/                  LiteRT.js (.tflite) or onnxruntime-web (.onnx), copied from
                              web_demo/node_modules (`npm ci` there first)

`make_server` serves such a folder on 127.0.0.1 with the cross-origin isolation headers
(COOP/COEP) that WebAssembly threads need, and the MIME types browsers insist on for
.mjs and .wasm (Python's http.server sends neither header).

`drive_chromium` opens built sites in Debian's headless Chromium through
web_demo/test/drive.mjs (playwright-core), offline; the tests and benchmarks/browser.py
judge what it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np

from dermmobile.errors import BadInputError, ExportFailedError, UnsafeFileError

SITE_SCHEMA = "dermmobile-web-site"
SITE_SCHEMA_VERSION = 1
SITE_INDEX = "site.json"
DEMO_DIR = Path(__file__).resolve().parents[1] / "web_demo"
PAGE_SUFFIXES = (".html", ".css", ".js")  # the page is every such file at web_demo's top level
MODEL_DIR = "model"
MANIFEST_FILE = "manifest.json"
GOLDEN_DIR = "golden"
TWIN_CHECK_INPUTS = 16  # random inputs on which the uint8 twin must equal the int8 artifact (plus every golden image)


@dataclass(frozen=True)
class BrowserRuntime:
    """One browser runtime: its npm package and the files the page loads from runtime/<folder>/."""

    name: str
    package: str
    folder: str
    files: dict[str, str]  # destination under runtime/<folder>/ -> source under node_modules/


# Exactly the files each runtime loads (see DESIGN.md, "Browser runtime"). LiteRT.js picks
# its .wasm by browser feature: relaxed SIMD (internal), without it (compat), threads (threaded).
RUNTIMES = {
    "tflite": BrowserRuntime(
        "LiteRT.js",
        "@litertjs/core",
        "litert",
        {
            "index.js": "@litertjs/core/dist/index.js",
            "wasm-utils.js": "@litertjs/wasm-utils/dist/bundle.js",  # its package.json "main" names a file it lacks
            **{
                f"wasm/litert_wasm_{kind}internal.{ext}": f"@litertjs/core/wasm/litert_wasm_{kind}internal.{ext}"
                for kind in ("", "compat_", "threaded_")
                for ext in ("js", "wasm")
            },
        },
    ),
    "onnx": BrowserRuntime(
        "onnxruntime-web",
        "onnxruntime-web",
        "ort",
        {
            "ort.wasm.min.mjs": "onnxruntime-web/dist/ort.wasm.min.mjs",
            "ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
            "ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
        },
    ),
}
INPUT_DTYPES = ("float32", "int8", "uint8")


@dataclass
class Site:
    """What `build_site` put where."""

    folder: Path
    model: Path
    manifest: Path
    golden: Path | None
    samples: int
    runtime: str
    uint8_twin: bool


# -- building ---------------------------------------------------------------------------------


def runtime_files(fmt: str, demo: Path = DEMO_DIR) -> dict[Path, Path]:
    """destination (relative to the site) -> source file, for the runtime of format `fmt`; raises naming `npm ci`."""
    runtime = RUNTIMES[fmt]
    modules = Path(demo) / "node_modules"
    files = {Path("runtime") / runtime.folder / dest: modules / source for dest, source in runtime.files.items()}
    missing = [str(source) for source in files.values() if not source.is_file()]
    if missing:
        raise BadInputError(
            f"{runtime.name} is not installed in {modules} (missing {missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); run `npm ci` in {Path(demo)} first"
        )
    return files


def package_version(package: str, demo: Path = DEMO_DIR) -> str:
    try:
        return json.loads((Path(demo) / "node_modules" / package / "package.json").read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def is_site(folder: Path) -> bool:
    """True when `folder` holds a previous `dermmobile web` build (its site.json says so)."""
    from dermmobile.readers import read_json

    index = Path(folder) / SITE_INDEX
    if index.is_symlink() or not index.is_file():
        return False
    try:
        data = read_json(index, "site index")  # bounded: a hostile site.json is "not a site", not a traceback
    except BadInputError:
        return False
    return isinstance(data, dict) and data.get("schema") == SITE_SCHEMA


def _check_out(out: Path) -> None:
    """Refuse to replace anything but a missing or empty folder or a previous web build; never write through a link."""
    if out.is_symlink():
        raise UnsafeFileError(f"--out {out} is a symbolic link; give a real folder (dermmobile never writes through links)")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not is_site(out):
        raise BadInputError(
            f"--out {out} is not empty and is not a previous `dermmobile web` build (no {SITE_INDEX}); "
            "give a new or empty folder (a previous build there is replaced whole)"
        )


def _page_files(demo: Path) -> list[Path]:
    if not (demo / "index.html").is_file():
        raise BadInputError(f"{demo} is not the web_demo folder (no index.html); pass --demo PATH/TO/web_demo")
    files = sorted(p for p in demo.iterdir() if p.suffix in PAGE_SUFFIXES and p.is_file())
    if not (demo / "preprocess.js").is_file():
        raise BadInputError(f"{demo} has no preprocess.js (the page's preprocessing); update your checkout of web_demo")
    return files


def _copy(source: Path, dest: Path) -> None:
    """Copy into the fresh staging folder: `dest` is new, so no link can be followed when writing it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    dest.chmod(0o644)


def _open_runtime(artifact_path: Path, manifest):
    """The artifact's own runtime, proven to run (exit 2 for a damaged file, as in every command)."""
    from dermmobile.artifact import Artifact
    from dermmobile.runtime import open_runtime

    return open_runtime(Artifact(Path(artifact_path), manifest))


def _golden_inputs(golden_index: Path) -> list[np.ndarray]:
    """The golden input tensors as float32 NCHW (what Runtime.predict takes)."""
    index = json.loads(golden_index.read_text("utf-8"))
    tensors = []
    for sample in index["samples"]:
        values = np.frombuffer((golden_index.parent / sample["input"]).read_bytes(), "<f4").reshape(sample["input_shape"])
        tensors.append(values.transpose(0, 3, 1, 2) if index["layout"] == "NHWC" else values)
    return tensors


def _check_twin(original, twin, inputs: list[np.ndarray]) -> None:
    """The uint8 twin must give the int8 artifact's logits exactly: refuse to ship it otherwise."""
    for number, batch in enumerate(inputs):
        expected, actual = original.predict(batch), twin.predict(batch)
        if not np.array_equal(expected, actual):
            raise ExportFailedError(
                f"the uint8-I/O twin differs from the int8 artifact on input {number} (max abs logit difference "
                f"{float(np.max(np.abs(expected - actual))):.3g}); the browser would not run the same model. "
                "Report this with the artifact"
            )


def build_site(artifact_path: Path, images: Sequence[Path], out: Path, demo: Path = DEMO_DIR, runtime=None) -> Site:
    """Assemble the web demo for one verified .tflite or .onnx artifact in `out` (see the module docstring).

    The site is assembled in a temporary folder beside `out` and renamed into place, so a
    failed build leaves the previous one whole. `runtime` (a Runtime for golden logits)
    defaults to the artifact's own.
    """
    from dermmobile.fsutil import staged_folder

    out, demo = Path(out), Path(demo)
    artifact = _web_artifact(Path(artifact_path))
    page = _page_files(demo)
    runtime_sources = runtime_files(artifact.manifest.format, demo)
    _check_out(out)

    with staged_folder(out) as staging:
        for source in page:
            _copy(source, staging / source.name)
        for dest, source in runtime_sources.items():
            _copy(source, staging / dest)
        model_file, golden, twin = _write_model(staging, artifact, images, runtime)
        _write_index(staging, artifact, model_file, golden, twin, demo)
    return Site(
        folder=out,
        model=out / MODEL_DIR / model_file.name,
        manifest=out / MODEL_DIR / MANIFEST_FILE,
        golden=out / GOLDEN_DIR / golden.name if golden else None,
        samples=len(images),
        runtime=RUNTIMES[artifact.manifest.format].name,
        uint8_twin=twin,
    )


def _web_artifact(path: Path):
    """The verified artifact, refused unless the browser runtimes can run its format, dtypes and layout."""
    from dermmobile.artifact import load_artifact

    artifact = load_artifact(path)  # refuses a missing manifest or a sha256 mismatch
    manifest = artifact.manifest
    if manifest.format not in RUNTIMES or not artifact.path.is_file() or artifact.path.suffix != f".{manifest.format}":
        raise BadInputError(
            f"{artifact.path} is a {manifest.format} artifact; the web demo runs .tflite (LiteRT.js) and .onnx "
            "(onnxruntime-web) files. Export one with `dermmobile export --target tflite` or `--target onnx`"
        )
    for role, spec in (("input", manifest.input), ("output", manifest.output)):
        if spec.dtype not in INPUT_DTYPES:
            raise BadInputError(f"{artifact.path}: {role} dtype {spec.dtype!r} is not one of {', '.join(INPUT_DTYPES)}")
    if (manifest.input.layout or "NCHW").upper() not in ("NCHW", "NHWC"):
        raise BadInputError(f"{artifact.path}: input layout {manifest.input.layout!r} is not NCHW or NHWC; re-export it")
    return artifact


def _write_model(staging: Path, artifact, images: Sequence[Path], runtime):
    """The model the page loads (the artifact, or its uint8-I/O twin, checked equal), its manifest and golden
    samples; returns (model file, golden index or None, whether it is the twin)."""
    from dermmobile.android import write_golden_samples
    from dermmobile.artifact import load_artifact
    from dermmobile.fsutil import atomic_write_json
    from dermmobile.targets.tflite_uint8_io import needs_uint8_io_twin, write_uint8_io_twin

    manifest = artifact.manifest
    model_dir = staging / MODEL_DIR
    twin = needs_uint8_io_twin(manifest)
    if twin:
        model_file = model_dir / f"{artifact.path.stem}-uint8io.tflite"
        model_dir.mkdir(parents=True)
        page_manifest = write_uint8_io_twin(artifact, model_file)
    else:
        model_file = model_dir / artifact.path.name
        _copy(artifact.path, model_file)
        page_manifest = manifest
    atomic_write_json(model_dir / MANIFEST_FILE, page_manifest.to_dict())
    load_artifact(model_dir / MANIFEST_FILE)  # the copy verifies: its manifest names it, sha256 matches
    golden = None
    if images:
        # Golden logits come from the artifact itself (the int8 one, not its twin): what the browser must match.
        original = runtime or _open_runtime(artifact.path, manifest)
        golden = write_golden_samples(images, page_manifest, original, staging / GOLDEN_DIR)
    if twin:
        crop = int(manifest.preprocess["crop"])
        generator = np.random.default_rng(0)
        inputs = [generator.standard_normal((1, 3, crop, crop), dtype=np.float32) for _ in range(TWIN_CHECK_INPUTS)]
        inputs += _golden_inputs(golden) if golden else []
        _check_twin(_open_runtime(artifact.path, manifest), _open_runtime(model_file, page_manifest), inputs)
    return model_file, golden, twin


def _write_index(staging: Path, artifact, model_file: Path, golden: Path | None, twin: bool, demo: Path) -> None:
    """site.json: what the page loads, from which runtime, built from which artifact."""
    from dermmobile.data import MAX_PIXELS
    from dermmobile.fsutil import atomic_write_json

    browser = RUNTIMES[artifact.manifest.format]
    atomic_write_json(
        staging / SITE_INDEX,
        {
            "schema": SITE_SCHEMA,
            "schema_version": SITE_SCHEMA_VERSION,
            "model": f"{MODEL_DIR}/{model_file.name}",
            "manifest": f"{MODEL_DIR}/{MANIFEST_FILE}",
            "golden": f"{GOLDEN_DIR}/{golden.name}" if golden else None,
            "runtime": {
                "name": browser.name,
                "package": browser.package,
                "version": package_version(browser.package, demo),
                "folder": f"runtime/{browser.folder}/",
            },
            "source_artifact": {"file": artifact.path.name, "sha256": artifact.manifest.sha256},
            "uint8_io_twin": twin,
            "max_pixels": MAX_PIXELS,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


# -- serving ----------------------------------------------------------------------------------

HOST = "127.0.0.1"  # never another interface: the demo is for this machine (or a phone through `adb reverse`)
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".tflite": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
# Cross-origin isolation (SharedArrayBuffer, so WebAssembly threads) needs both COOP and COEP.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with isolation headers, explicit MIME types, no caching (a rebuild shows at once)."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = False

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(folder: Path, port: int = 8000, quiet: bool = False) -> ThreadingHTTPServer:
    """A server for a built site on 127.0.0.1:`port` (0 picks a free port); call serve_forever on it."""
    folder = Path(folder)
    if not is_site(folder):
        raise BadInputError(f"{folder} is not a `dermmobile web` build (no {SITE_INDEX}); build one with --out {folder}")
    handler = type("Handler", (SiteHandler,), {"quiet": quiet})
    try:
        return ThreadingHTTPServer((HOST, port), partial(handler, directory=str(folder.resolve())))
    except OSError as exc:
        raise BadInputError(f"cannot listen on {HOST}:{port} ({exc.strerror}); pick another --port") from None


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """Serve a built site on a free 127.0.0.1 port in a background thread; yields its URL."""
    import threading

    server = make_server(folder, 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- driving Chromium ---------------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("DERMMOBILE_CHROMIUM", "/usr/bin/chromium"))
DRIVER = Path("test") / "drive.mjs"


def browser_missing(demo: Path = DEMO_DIR, chromium: Path = CHROMIUM) -> str | None:
    """What is missing to drive Chromium (None when nothing is), with the command that installs it."""
    demo = Path(demo)
    if not chromium.is_file():
        return f"{chromium} (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node (apt-get install -y nodejs npm)"
    if not (demo / "node_modules" / "playwright-core" / "package.json").is_file():
        return f"playwright-core in {demo}/node_modules (run `npm ci` in {demo})"
    for fmt in RUNTIMES:
        try:
            runtime_files(fmt, demo)
        except BadInputError as exc:
            return str(exc)
    return None


def drive_chromium(pages: list[dict], work: Path, demo: Path = DEMO_DIR, timeout_s: float = 900) -> dict:
    """Run web_demo/test/drive.mjs over `pages` (its plan format) in headless Chromium; return its results.

    Raises ExportFailedError with the driver's output when it fails as a whole (a page's own
    failure is in its result instead).
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    plan, results = work / "chromium-plan.json", work / "chromium-results.json"
    plan.write_text(json.dumps({"out": str(results), "chromium": str(CHROMIUM), "pages": pages}, indent=2))
    results.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            ["node", str(Path(demo) / DRIVER), str(plan)], capture_output=True, text=True, timeout=timeout_s, cwd=demo
        )
    except subprocess.TimeoutExpired:
        raise ExportFailedError(f"Chromium did not finish {len(pages)} page(s) in {timeout_s:.0f} s") from None
    if done.returncode != 0 or not results.is_file():
        raise ExportFailedError(f"the Chromium driver failed (exit {done.returncode}): {(done.stderr or done.stdout)[-3000:]}")
    return json.loads(results.read_text("utf-8"))
