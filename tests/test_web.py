"""The web demo: `dermmobile web`, its server, the uint8 twin, and the page itself in real Chromium.

The browser tests export the fixture model to TFLite and ONNX, fp32 and int8, build a site
for each with `dermmobile web`, serve them on 127.0.0.1 and drive Debian's headless
Chromium through web_demo/test/drive.mjs (playwright-core), offline. They need
`apt-get install -y chromium` and `npm ci` in web_demo/; without them they skip locally and
fail when CI=true (like the Java tests in test_android.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermmobile.artifact import Manifest, TensorSpec, load_artifact, write_manifest
from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.web import (
    DEMO_DIR,
    ISOLATION_HEADERS,
    RUNTIMES,
    SITE_INDEX,
    browser_missing,
    build_site,
    drive_chromium,
    make_server,
    runtime_files,
    serving,
)

FP32_TOLERANCE = 1e-4  # max abs logit difference, browser vs Python, fp32 artifacts (measured: 0 for tflite, ~2e-7 onnx)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _require(missing: str | None, what: str) -> None:
    if missing is None:
        return
    message = f"{what} needs {missing}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _require_node() -> None:
    _require(None if shutil.which("node") else "node (apt-get install -y nodejs npm)", "the page's Node tests")


def _require_browser() -> None:
    _require(browser_missing(), "the Chromium tests")


# -- a fake artifact (no converter needed) ---------------------------------------------------------


@pytest.fixture(scope="module")
def torch_runtime():
    import torch

    from dermmobile.models import build_model
    from dermmobile.synthetic import PAPER_CLASSES
    from dermmobile.targets.base import TorchRuntime

    torch.manual_seed(0)
    return TorchRuntime(build_model("tiny_cnn", len(PAPER_CLASSES)))


def _fake_artifact(folder: Path, small_spec, fmt: str = "onnx") -> Path:
    from dermmobile.synthetic import PAPER_CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny_cnn-{fmt}-none.{fmt}"
    path.write_bytes(b"fake model bytes")
    crop = small_spec.crop
    manifest = Manifest(
        format=fmt, quantization="none", file=path.name, arch="tiny_cnn", labels=list(PAPER_CLASSES),
        input=TensorSpec("image", [1, 3, crop, crop], "float32", "NCHW"),
        output=TensorSpec("logits", [1, len(PAPER_CLASSES)], "float32"), preprocess=small_spec.to_dict(),
    )  # fmt: skip
    write_manifest(path, manifest)
    return path


def _images(folder: Path, count: int = 2) -> list[Path]:
    from dermmobile.synthetic import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index}.png"
        Image.fromarray(synthetic_image(index, index, size=90 + 7 * index)).save(path)
        paths.append(path)
    return paths


def _fake_demo(tmp_path: Path) -> Path:
    """A web_demo copy without node_modules (the page files only)."""
    demo = tmp_path / "web_demo"
    demo.mkdir(parents=True)
    for source in DEMO_DIR.iterdir():
        if source.is_file():
            shutil.copyfile(source, demo / source.name)
    (demo / "preprocess.js").touch()
    return demo


def _node_modules_demo(tmp_path: Path) -> Path:
    """A web_demo whose node_modules holds empty stand-ins for the runtime files (build tests need no npm)."""
    demo = _fake_demo(tmp_path)
    for runtime in RUNTIMES.values():
        for source in runtime.files.values():
            target = demo / "node_modules" / source
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"// stand-in\n")
    assert runtime_files("tflite", demo) and runtime_files("onnx", demo)
    return demo


# -- building and serving -----------------------------------------------------------------------


def test_build_site_layout(tmp_path, small_spec, torch_runtime):
    demo = _node_modules_demo(tmp_path)
    artifact = _fake_artifact(tmp_path / "export", small_spec)
    images = _images(tmp_path / "images")
    site = build_site(artifact, images, tmp_path / "site", demo=demo, runtime=torch_runtime)
    index = json.loads((site.folder / SITE_INDEX).read_text())
    assert index["model"] == f"model/{artifact.name}" and index["golden"] == "golden/golden.json"
    assert index["runtime"]["name"] == "onnxruntime-web" and not index["uint8_io_twin"]
    assert (site.folder / "index.html").is_file() and (site.folder / "app.js").is_file()
    assert (site.folder / "runtime" / "ort" / "ort-wasm-simd-threaded.wasm").is_file()
    assert not (site.folder / "runtime" / "litert").exists(), "only the artifact's own runtime is copied"
    assert load_artifact(site.manifest).path.read_bytes() == artifact.read_bytes()
    golden = json.loads(site.golden.read_text())
    assert len(golden["samples"]) == 2 and golden["manifest"]["file"] == artifact.name
    # A rebuild replaces the previous build whole and leaves no temporary folders.
    build_site(artifact, images[:1], tmp_path / "site", demo=demo, runtime=torch_runtime)
    assert len(json.loads(site.golden.read_text())["samples"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # Without images: no golden folder, and the page says so.
    bare = build_site(artifact, [], tmp_path / "bare", demo=demo)
    assert bare.golden is None and json.loads((bare.folder / SITE_INDEX).read_text())["golden"] is None


def test_build_site_refusals(tmp_path, small_spec, torch_runtime):
    demo = _node_modules_demo(tmp_path)
    artifact = _fake_artifact(tmp_path / "export", small_spec)
    images = _images(tmp_path / "images", 1)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not a previous `dermmobile web` build"):
        build_site(artifact, images, occupied, demo=demo, runtime=torch_runtime)
    assert (occupied / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        build_site(artifact, images, link, demo=demo, runtime=torch_runtime)
    assert not (tmp_path / "elsewhere").exists()
    coreml = _fake_artifact(tmp_path / "export2", small_spec, fmt="coreml")  # a registered format the web cannot run
    with pytest.raises(BadInputError, match=r"\.tflite \(LiteRT\.js\) and \.onnx"):
        build_site(coreml, images, tmp_path / "s1", demo=demo, runtime=torch_runtime)
    with pytest.raises(BadInputError, match="npm ci"):
        build_site(artifact, images, tmp_path / "s2", demo=_fake_demo(tmp_path / "bare"), runtime=torch_runtime)
    artifact.write_bytes(b"changed after export")
    with pytest.raises(UnsafeFileError, match="sha256"):
        build_site(artifact, images, tmp_path / "s3", demo=demo, runtime=torch_runtime)
    assert not any((tmp_path / name).exists() for name in ("s1", "s2", "s3"))


def test_cli_refuses_with_exit_code_2(tmp_path, small_spec):
    from dermmobile.cli import main

    artifact = _fake_artifact(tmp_path / "export", small_spec)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("x")
    assert main(["web", "--artifact", str(artifact), "--out", str(tmp_path / "occupied")]) == 2
    assert main(["web", "--artifact", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "new")]) == 2


def test_server_headers_and_mime_types(tmp_path, small_spec, torch_runtime):
    demo = _node_modules_demo(tmp_path)
    site = build_site(_fake_artifact(tmp_path / "export", small_spec), [], tmp_path / "site", demo=demo)
    with serving(site.folder) as url:
        assert url.startswith("http://127.0.0.1:")
        expected = {"": "text/html", "app.js": "text/javascript", "runtime/ort/ort.wasm.min.mjs": "text/javascript",
                    "runtime/ort/ort-wasm-simd-threaded.wasm": "application/wasm", "site.json": "application/json"}  # fmt: skip
        for path, mime in expected.items():
            with urllib.request.urlopen(url + path, timeout=10) as response:
                assert response.headers["Content-Type"].startswith(mime), path
                for name, value in ISOLATION_HEADERS.items():
                    assert response.headers[name] == value, (path, name)
    with pytest.raises(BadInputError, match="not a `dermmobile web` build"):
        make_server(tmp_path, 0)


def test_web_modules_import_light():
    code = "import sys, dermmobile.commands.web, dermmobile.web; print('torch' in sys.modules)"
    result = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# -- the page's JavaScript under Node -------------------------------------------------------------


def test_page_modules_under_node():
    _require_node()
    result = subprocess.run(["node", "--test", "test/page.test.mjs"], cwd=DEMO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def test_js_quantization_equals_numpy():
    """runtime.js quantize/dequantize == dermmobile.targets.base on values that hit every rounding case."""
    _require_node()
    from dermmobile.targets.base import dequantize, quantize

    generator = np.random.default_rng(0)
    scale, zero_point = 0.018327182, -17
    values = generator.standard_normal(20000).astype(np.float32) * 2.5
    ties = ((np.arange(-300, 300) + 0.5) * np.float32(scale)).astype(np.float32)  # x / scale lands on .5 (or next to it)
    values = np.concatenate([values, ties, np.float32([0, -0.0, 1e9, -1e9])])
    script = (
        "import {quantize, dequantize} from './runtime.js';"
        "const input = JSON.parse(require_input());"
        "const q = quantize(Float32Array.from(input.values), input.dtype, input.scale, input.zp);"
        "console.log(JSON.stringify({q: Array.from(q), d: Array.from(dequantize(q, input.scale, input.zp))}));"
    ).replace("require_input()", "(await import('node:fs')).readFileSync(0, 'utf8')")
    for dtype, zp in (("int8", zero_point), ("uint8", zero_point + 128)):
        payload = json.dumps({"values": values.tolist(), "dtype": dtype, "scale": scale, "zp": zp})
        result = subprocess.run(
            ["node", "--input-type=module", "-e", script], cwd=DEMO_DIR, input=payload, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        expected = quantize(values, np.dtype(dtype), scale, zp)
        np.testing.assert_array_equal(np.asarray(out["q"]), expected.astype(np.int64))
        np.testing.assert_array_equal(np.asarray(out["d"], np.float32), dequantize(expected, scale, zp))


# -- the uint8 twin (no browser) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_root) -> dict[str, Path]:
    """The fixture model exported to tflite and onnx, fp32 and int8 (int8 calibrated on the synthetic images),
    and tflite int8 NHWC (what Android apps take). The TFLite int8 files quantize the logits layer too
    (--int8-logits): full-integer files with int8 I/O, the case the uint8 twin exists for (by default the logits
    layer stays float and the file takes and gives float32, which LiteRT.js runs as it is)."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    pytest.importorskip("onnxruntime")
    from dermmobile.cli import main

    out = tmp_path_factory.mktemp("web-export")
    for target, quantize, layout in (("tflite", "none", "nchw"), ("tflite", "int8", "nchw"), ("tflite", "int8", "nhwc"),
                                     ("onnx", "none", "nchw"), ("onnx", "int8", "nchw")):  # fmt: skip
        args = ["export", "--checkpoint", str(tiny_checkpoint), "--target", target, "--quantize", quantize, "--out", str(out)]
        full_integer = ["--int8-logits"] if (target, quantize) == ("tflite", "int8") else []
        assert main([*args, "--layout", layout, "--calib-data", str(synthetic_root), *full_integer]) == 0
    files = {path.stem.split("-", 1)[1]: path for path in out.glob("*") if path.suffix in (".tflite", ".onnx")}
    return files | {"onnx-int8-float-layer": _onnx_with_a_float_layer(tiny_checkpoint, synthetic_root, out)}


def _onnx_with_a_float_layer(checkpoint_path: Path, synthetic_root: Path, out: Path) -> Path:
    """ONNX int8 with a middle layer float, as the fallback leaves real models: that layer reads its input through a
    per-channel DequantizeLinear (targets/onnx.keep_float), which onnxruntime-web has to run as well."""
    import onnx

    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import export_artifact, plan_export
    from dermmobile.targets import get_target

    checkpoint = load_checkpoint(checkpoint_path)
    plan = plan_export(checkpoint, "onnx", "int8", out, calib_data=synthetic_root, calib_count=18)
    plan.variant = "float-layer"  # tiny_cnn-onnx-int8-float-layer.onnx
    artifact = export_artifact(checkpoint, get_target("onnx"), plan, frozenset({"3", "10"}))
    assert [node for node in onnx.load(str(artifact.path)).graph.node if node.name.endswith("_float_input")]
    return artifact.path


def test_uint8_twin_gives_the_int8_logits(exported, tmp_path):
    from dermmobile.targets import get_target
    from dermmobile.targets.tflite_uint8_io import write_uint8_io_twin

    artifact = load_artifact(exported["tflite-int8"])
    assert artifact.manifest.input.dtype == "int8", "the exporter's int8 artifact has int8 I/O (the case the twin exists for)"
    twin_file = tmp_path / "twin.tflite"
    twin_manifest = write_uint8_io_twin(artifact, twin_file)
    assert twin_manifest.input.dtype == twin_manifest.output.dtype == "uint8"
    assert twin_manifest.input.zero_point == artifact.manifest.input.zero_point + 128
    assert twin_manifest.input.scale == artifact.manifest.input.scale
    original = get_target("tflite").load(artifact.path, artifact.manifest)
    twin = get_target("tflite").load(twin_file, twin_manifest)
    assert twin.input["dtype"] == np.uint8 and twin.output["dtype"] == np.uint8
    batch = np.random.default_rng(1).standard_normal((24, *artifact.manifest.input.shape[1:]), dtype=np.float32) * 2
    np.testing.assert_array_equal(twin.predict(batch), original.predict(batch))
    # Its manifest is a valid manifest of the twin: the parity it inherits is bound to the twin's own file.
    from dermmobile.artifact import write_manifest

    write_manifest(twin_file, twin_manifest)
    reloaded = load_artifact(twin_file).manifest
    assert reloaded.sha256 != artifact.manifest.sha256
    assert (reloaded.parity is None) == (artifact.manifest.parity is None)
    if reloaded.parity is not None:  # checked at export (enough images for a gate set): bound to the twin's file
        assert reloaded.parity["artifact_sha256"] == reloaded.sha256
        assert reloaded.parity["measured_on"] == {"file": artifact.manifest.file, "sha256": artifact.manifest.sha256}


def test_uint8_twin_refuses_what_it_cannot_twin(exported):
    from dermmobile.targets.tflite_uint8_io import needs_uint8_io_twin, uint8_io_bytes

    fp32 = load_artifact(exported["tflite-none"])
    assert not needs_uint8_io_twin(fp32.manifest) and needs_uint8_io_twin(load_artifact(exported["tflite-int8"]).manifest)
    assert not needs_uint8_io_twin(load_artifact(exported["onnx-int8"]).manifest), "ONNX int8 keeps float32 I/O"
    with pytest.raises(BadInputError, match="int8-I/O artifacts"):
        uint8_io_bytes(fp32.path.read_bytes())
    with pytest.raises(BadInputError, match="not a readable TFLite flatbuffer"):
        uint8_io_bytes(b"\x00" * 3)


# -- in Chromium ----------------------------------------------------------------------------------

CASES = ["tflite-none", "tflite-int8", "tflite-int8-nhwc", "onnx-none", "onnx-int8", "onnx-int8-float-layer"]
# Each bad site is a good tflite site with one thing broken, and the text the page must show.
BROKEN = {
    "manifest-not-json": ("model/manifest.json", lambda path: path.write_text("{not json"), "is damaged"),
    "manifest-no-labels": ("model/manifest.json", lambda path: _edit_json(path, labels=[]), "labels must be a non-empty list"),
    "manifest-unknown-preprocessing": (
        "model/manifest.json",
        lambda path: _edit_json(path, preprocess={**json.loads(path.read_text())["preprocess"], "algorithm": "made-up-v9"}),
        "preprocessing is not supported",
    ),
    "model-changed": ("model/*.tflite", lambda path: path.write_bytes(path.read_bytes() + b"!"), "does not match its manifest"),
    "model-not-a-model": ("model/*.tflite", lambda path: _replace_model(path, b"\x00" * 64), "could not be loaded"),
    "model-missing": ("model/*.tflite", lambda path: path.unlink(), "model file is missing"),
}


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _replace_model(path: Path, content: bytes) -> None:
    """Garbage with a matching sha256: only the runtime itself can refuse it."""
    import hashlib

    path.write_bytes(content)
    _edit_json(path.parent / "manifest.json", sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))


@pytest.fixture(scope="module")
def chromium_run(exported, synthetic_root, tmp_path_factory) -> dict:
    """Build one site per case (and the broken ones), serve each, and drive them all in one Chromium session."""
    _require_browser()
    work = tmp_path_factory.mktemp("web-chromium")
    photos = sorted(synthetic_root.glob("*/*.png"))[::15]  # 6 photos over several classes
    sites = {case: build_site(exported[case], photos, work / case).folder for case in CASES}
    for name, (pattern, breaker, _) in BROKEN.items():
        shutil.copytree(sites["tflite-none"], work / name)
        (target,) = (work / name).glob(pattern)
        breaker(target)
        sites[name] = work / name
    pages = []
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serving(folder)) for name, folder in sites.items()}
        for case in CASES:
            pages.append({"name": case, "url": urls[case] + "?threads=1", "golden_check": True, "photos": [str(photos[0])],
                          "screenshot": str(work / f"{case}.png"), "bench": {"iterations": 5, "warmup": 2}})  # fmt: skip
        pages.append({"name": "tflite-int8-2-threads", "url": urls["tflite-int8"] + "?threads=2", "golden_check": True})
        pages += [{"name": name, "url": urls[name], "screenshot": str(work / f"{name}.png")} for name in BROKEN]
        results = drive_chromium(pages, work)
    return {"pages": {page["name"]: page for page in results["pages"]}, "sites": sites, "photos": photos, "work": work}


def _golden(site: Path) -> dict:
    return json.loads((site / "golden" / "golden.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_browser_gives_pythons_answers(chromium_run, case):
    page = chromium_run["pages"][case]
    assert page["state"] == "ready", page
    assert page.get("driver_error") is None, page["driver_error"]
    assert not [e for e in page["console_errors"] if e.startswith("pageerror")], page["console_errors"]
    golden = _golden(chromium_run["sites"][case])
    checked = page["golden"]["samples"]
    assert [s["id"] for s in checked] == [s["id"] for s in golden["samples"]]
    for browser, python in zip(checked, golden["samples"], strict=True):
        # The JavaScript preprocessing gives Python's input tensor bit for bit on the same decoded pixels.
        assert browser["input_values_differing"] == 0, (case, browser["id"], browser["input_max_abs_diff"])
        assert browser["top1"] == python["top1"], (case, browser["id"])
        logits, expected = np.asarray(browser["logits"], np.float32), np.asarray(python["logits"], np.float32)
        if "int8" in case and not golden["manifest"].get("float_layers"):
            # Full-integer int8: equal after dequantization. TFLite: XNNPACK's kernels on both sides, equal by
            # construction. ONNX: equal on this model, but not in general: on Lite0, onnxruntime-web's WebAssembly
            # int8 kernels gave logits up to 0.11 away from native x86 onnxruntime (benchmarks/results/browser-*).
            np.testing.assert_array_equal(logits, expected)
            if golden["manifest"]["input"]["dtype"] != "float32":
                assert browser["quantized_input_equal"] is True
        else:  # float, or int8 with a float logits layer (ONNX int8 by default): float rounding differs
            assert float(np.max(np.abs(logits - expected))) <= FP32_TOLERANCE, case
            if "int8" in case and golden["manifest"]["input"]["dtype"] != "float32":
                assert browser["quantized_input_equal"] is True


@pytest.mark.parametrize("case", CASES)
def test_browser_photo_result_page(chromium_run, case):
    """A photo chosen through the file input gives Python's top-1 on the page; the screenshot shows it."""
    page = chromium_run["pages"][case]
    (shown,) = page["photos"]
    assert shown["error"] is None, shown["error"]
    photo = Path(shown["photo"])
    sample = next(s for s in _golden(chromium_run["sites"][case])["samples"] if s["source"] == photo.name)
    assert shown["top1_label"] == sample["top1_label"]
    assert shown["top_labels"][0] == sample["top1_label"] and len(shown["top_labels"]) == 3
    assert sample["top1_label"].replace("_", " ") in shown["top_text"]
    assert "Inference" in shown["timing_text"]
    # The browser decoded the PNG itself: same pixels as Pillow, so the logits are Python's too.
    np.testing.assert_allclose(shown["result"]["logits"], sample["logits"], atol=FP32_TOLERANCE)
    assert "research tool, not a diagnosis" in shown["disclaimer"]["text"] and shown["disclaimer"]["in_viewport"]
    screenshot = Image.open(shown["screenshot"]).convert("L")
    assert screenshot.size == (412, 915)
    pixels = np.asarray(screenshot, np.float32)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"


def test_browser_threads_and_isolation(chromium_run):
    page = chromium_run["pages"]["tflite-int8-2-threads"]
    assert page["state"] == "ready" and page["cross_origin_isolated"] is True
    assert page["threads"] == 2 and "2 threads" in page["status"]
    golden = _golden(chromium_run["sites"]["tflite-int8"])
    for browser, python in zip(page["golden"]["samples"], golden["samples"], strict=True):
        np.testing.assert_array_equal(np.asarray(browser["logits"], np.float32), np.asarray(python["logits"], np.float32))


def test_browser_stays_offline(chromium_run):
    for name, page in chromium_run["pages"].items():
        assert page["outside_requests"] == [], (name, page["outside_requests"])


def test_browser_bench_rows_merge(chromium_run):
    from dermmobile.bench.merge import check_row

    for case in CASES:
        row = chromium_run["pages"][case]["bench"]
        checked = check_row(row, f"browser row {case}")
        assert checked["source"] == "browser" and checked["threads"] == 1 and checked["iterations"] == 5
        assert checked["artifact"] == f"tiny_cnn-{case}.{case.split('-')[0]}", "rows name the exported artifact"
        assert checked["top1_matches_golden"] is True


@pytest.mark.parametrize("name", list(BROKEN))
def test_browser_bad_artifact_shows_a_message(chromium_run, name):
    page = chromium_run["pages"][name]
    assert page["state"] == "error", page
    assert BROKEN[name][2] in page["error"], page["error"]
    assert "dermmobile" in page["error"], "the message says what to do next"
    assert "research tool, not a diagnosis" in page["disclaimer"]["text"] and page["disclaimer"]["in_viewport"]
    pixels = np.asarray(Image.open(page["screenshot"]).convert("L"), np.float32)
    assert pixels.std() > 20, "not a blank screen"
