"""The Android demo without Android: golden samples, the Java preprocessing core, `dermmobile android`.

The Java module android_demo/preprocess-core is compiled with javac and its JUnit 4 tests
run against golden samples written here, so any drift between the Java and the Python
preprocessing fails CI. Needs a JDK 17+ and Debian's Gson and junit4 (apt-get install -y
default-jdk-headless libgoogle-gson-java junit4); without them the Java tests skip locally and
fail when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dermmobile.android import (
    BENCH_ROW_KEYS,
    GOLDEN_INDEX,
    check_bench_row,
    install_into_app,
    quantize_input,
    write_golden_samples,
)
from dermmobile.artifact import load_artifact, write_manifest
from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.predict import softmax
from dermmobile.preprocess import ALGORITHM_V1, PreprocessSpec
from dermmobile.synthetic import PAPER_CLASSES
from tests.golden_images import SIZES, golden_manifest, phone_images, small_images

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "android_demo" / "preprocess-core"
RUN_TESTS = CORE / "run-tests.sh"
GSON_JAR = Path(os.environ.get("GSON_JAR", "/usr/share/java/gson.jar"))
JUNIT_JAR = Path(os.environ.get("JUNIT_JAR", "/usr/share/java/junit4.jar"))
HAMCREST_JAR = Path(os.environ.get("HAMCREST_JAR", "/usr/share/java/hamcrest-core.jar"))

SMALL = PreprocessSpec(resize=64, crop=56)
SMALL_V1 = PreprocessSpec(resize=64, crop=56, algorithm=ALGORITHM_V1)


def _java_missing() -> str | None:
    missing = [tool for tool in ("javac", "java") if shutil.which(tool) is None]
    missing += [str(jar) for jar in (GSON_JAR, JUNIT_JAR, HAMCREST_JAR) if not jar.is_file()]
    return ", ".join(missing) or None


def _require_java() -> None:
    missing = _java_missing()
    if missing is None:
        return
    message = f"Java tests need {missing}: apt-get install -y default-jdk-headless libgoogle-gson-java junit4"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def runtime():
    import torch

    from dermmobile.models import build_model
    from dermmobile.targets.base import TorchRuntime

    torch.manual_seed(0)
    model = build_model("tiny_cnn", len(PAPER_CLASSES))
    # Make the logits spread out, so top-1 and probabilities say something.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    return TorchRuntime(model)


@pytest.fixture(scope="module")
def golden_images(tmp_path_factory) -> dict[str, list[Path]]:
    tmp = tmp_path_factory.mktemp("golden-images")
    small = small_images(tmp / "small")
    large = phone_images(tmp / "large")
    # v1 decodes at full size: the 12 MP photo is above the golden pixel limit there.
    return {"v2": [*small, *large.values()], "v1": [*small, *(path for name, path in large.items() if name != "phone")]}


# (set name, spec, layout, dtype): v2 (new manifests) in every layout and dtype, v1 (older
# manifests) in both layouts; each with the default 256/224 spec too.
GOLDEN_CASES = [
    ("nchw-float32", SMALL, "NCHW", "float32"),
    ("nhwc-float32", SMALL, "NHWC", "float32"),
    ("nchw-int8", SMALL, "NCHW", "int8"),
    ("nhwc-int8", SMALL, "NHWC", "int8"),
    ("nhwc-uint8", SMALL, "NHWC", "uint8"),
    ("default-nhwc-float32", PreprocessSpec(), "NHWC", "float32"),
    ("v1-nchw-float32", SMALL_V1, "NCHW", "float32"),
    ("v1-nhwc-int8", SMALL_V1, "NHWC", "int8"),
    ("v1-default-nchw-float32", PreprocessSpec(algorithm=ALGORITHM_V1), "NCHW", "float32"),
]
GOLDEN_SAMPLES = sum(len(SIZES) + (4 if spec.algorithm != ALGORITHM_V1 else 3) for _, spec, _, _ in GOLDEN_CASES)


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory, runtime, golden_images) -> Path:
    """Golden sets for NCHW/NHWC x float32/int8/uint8, v2 and v1, small and phone-sized photos."""
    root = tmp_path_factory.mktemp("golden") / "sets"
    for name, spec, layout, dtype in GOLDEN_CASES:
        images = golden_images["v1" if spec.algorithm == ALGORITHM_V1 else "v2"]
        write_golden_samples(images, golden_manifest(spec, layout, dtype), runtime, root / name)
    return root


def _run_core(core: Path, golden: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(core / "run-tests.sh"), str(golden)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


# -- Python side ------------------------------------------------------------------------


def test_golden_files_match_python_preprocessing(golden_root):
    index = json.loads((golden_root / "nhwc-int8" / GOLDEN_INDEX).read_text())
    assert index["schema"] == "dermmobile-golden" and len(index["samples"]) == len(SIZES) + 4
    for sample in index["samples"]:
        folder = golden_root / "nhwc-int8"
        rgb = np.frombuffer((folder / sample["rgb"]).read_bytes(), np.uint8).reshape(sample["height"], sample["width"], 3)
        expected = SMALL.array(rgb, "NHWC")
        tensor = np.frombuffer((folder / sample["input"]).read_bytes(), "<f4").reshape(expected.shape)
        np.testing.assert_array_equal(tensor, expected)
        assert sample["input_shape"] == [1, *expected.shape]
        quantized = np.frombuffer((folder / sample["input_quantized"]).read_bytes(), np.int8)
        np.testing.assert_array_equal(quantized, quantize_input(expected, "int8", 0.0187, -14).reshape(-1))
        np.testing.assert_allclose(sample["probabilities"], softmax(np.asarray(sample["logits"], np.float32)))
        assert sample["top1_label"] == PAPER_CLASSES[int(np.argmax(sample["logits"]))]
        ranked = [t["index"] for t in sample["top3"]]
        assert len(ranked) == 3 and ranked[0] == sample["top1"]
    float_index = json.loads((golden_root / "nchw-float32" / GOLDEN_INDEX).read_text())
    assert all(s["input_quantized"] is None for s in float_index["samples"])


@pytest.mark.parametrize(
    ("golden_set", "phone", "sideways", "boundary"),
    [
        ("nhwc-int8", (8, 504, 378), (8, 113, 151), (8, 64, 88)),  # resize 64
        ("default-nhwc-float32", (8, 504, 378), (2, 451, 602), (2, 256, 350)),  # resize 256
        ("v1-default-nchw-float32", None, (1, 901, 1203), (1, 512, 700)),  # v1: always full size
    ],
)
def test_golden_records_the_reduced_decode(golden_root, golden_set, phone, sideways, boundary):
    """(factor, decoded width, decoded height) per photo: JPEGs reduced by the spec, EXIF rotation after."""
    samples = {s["source"]: s for s in json.loads((golden_root / golden_set / GOLDEN_INDEX).read_text())["samples"]}
    expected = {"phone-4032x3024.jpg": phone, "sideways-1203x901.jpg": sideways, "boundary-512x700.jpg": boundary,
                "large-2401x1599.png": (1, 2401, 1599)}  # fmt: skip
    for source, want in expected.items():
        if want is None:
            assert source not in samples
            continue
        sample = samples[source]
        assert (sample["decode"]["factor"], sample["width"], sample["height"]) == want, source
    assert samples["phone-4032x3024.jpg" if phone else "boundary-512x700.jpg"]["decode"]["format"] == "JPEG"


def test_golden_refuses_oversized_and_mismatched(tmp_path, runtime, monkeypatch):
    import dermmobile.android as android

    images = small_images(tmp_path / "images", [(20, 10)])
    monkeypatch.setattr(android, "MAX_GOLDEN_PIXELS", 100)
    with pytest.raises(BadInputError, match="pixel limit"):
        write_golden_samples(images, golden_manifest(SMALL, "NCHW", "float32"), runtime, tmp_path / "g")
    monkeypatch.undo()
    wrong = golden_manifest(SMALL, "NCHW", "float32")
    wrong.labels = wrong.labels[:3]
    with pytest.raises(BadInputError, match="labels"):
        write_golden_samples(images, wrong, runtime, tmp_path / "g")
    with pytest.raises(BadInputError, match="no golden images"):
        write_golden_samples([], golden_manifest(SMALL, "NCHW", "float32"), runtime, tmp_path / "g")


def test_bench_row_schema():
    row = {
        "source": "android",
        "device": "Google Pixel 8 (Android 15, arm64-v8a)",
        "artifact": "m.tflite",
        "format": "tflite",
        "quantization": "int8",
        "threads": 4,
        "latency_ms": {"p50": 3.0, "p90": 3.5, "p99": 4.0, "mean": 3.1, "std": 0.2},
        "iterations": 100,
        "top1_matches_golden": True,
    }
    assert check_bench_row(row) is row
    assert list(row) == list(BENCH_ROW_KEYS)
    for broken in ({**row, "threads": "4"}, {**row, "threads": True}, {k: v for k, v in row.items() if k != "device"},
                   {**row, "extra": 1}, {**row, "latency_ms": {"p50": 1.0}}, {**row, "source": "ios"}):  # fmt: skip
        with pytest.raises(BadInputError):
            check_bench_row(broken)


# -- Java core ---------------------------------------------------------------------------


def test_java_core_matches_python(golden_root, tmp_path):
    _require_java()
    bench_row = tmp_path / "bench-row.json"
    result = _run_core(CORE, golden_root, DERMMOBILE_BENCH_OUT=str(bench_row))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "OK (" in output, output
    assert f"golden samples checked: {GOLDEN_SAMPLES} in {len(GOLDEN_CASES)} set(s)" in output, output
    # The row the Java code writes is the row Python's bench --merge accepts.
    rows = json.loads(bench_row.read_text())
    assert isinstance(rows, list) and rows
    from dermmobile.bench.merge import check_row

    for row in rows:
        check_bench_row(row)
        check_row(row, "row written by BenchRow.java")


# One constant in the Java code, changed slightly: the tests must notice.
DRIFTS = {
    "v1-filter-centre": ("ResampleV1.java", "double centre = (o + 0.5) * ratio;", "double centre = (o + 0.501) * ratio;"),
    "resize-rounding": ("Preprocessor.java", "Math.floor(height * scale + 0.5)", "Math.floor(height * scale + 0.49)"),
    "v1-upsampling-support": ("ResampleV1.java", "double support = Math.max(ratio, 1.0);",
                              "double support = Math.max(ratio, 1.01);"),
    "v2-filter-centre": ("ResampleV2.java", "double center = (first + k + 0.5) * scale;",
                         "double center = (first + k + 0.5001) * scale;"),
    "v2-pass-rounding": ("ResampleV2.java", "int half = 1 << (PRECISION_BITS - 1);", "int half = 1 << (PRECISION_BITS - 2);"),
    "v2-tap-rounding": ("ResampleV2.java", "fixed[x] = (int) (0.5 + normalized * (1 << PRECISION_BITS));",
                        "fixed[x] = (int) (normalized * (1 << PRECISION_BITS));"),
    "v2-table": ("Preprocessor.java", "table[c][v] = (float) ((v / spec.scale - spec.mean[c]) / spec.std[c]);",
                 "table[c][v] = (float) (v / spec.scale - spec.mean[c]) / (float) spec.std[c];"),
    "v2-decode-factor": ("PreprocessSpec.java", "if (shorter / f >= resize) {", "if (shorter / f > resize) {"),
    "softmax": ("Postprocess.java", "out[i] = Math.exp(logits[i] - max);", "out[i] = Math.exp(1.001 * (logits[i] - max));"),
}  # fmt: skip


@pytest.mark.parametrize(("file", "original", "drifted"), DRIFTS.values(), ids=DRIFTS.keys())
def test_java_core_fails_when_it_drifts(golden_root, tmp_path, file, original, drifted):
    _require_java()
    copy = tmp_path / "preprocess-core"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("build", ".gradle"))
    source = copy / "src" / "main" / "java" / "org" / "dermmobile" / "core" / file
    text = source.read_text()
    assert text.count(original) == 1, f"{file} no longer contains {original!r}; update DRIFTS"
    source.write_text(text.replace(original, drifted))
    result = _run_core(copy, golden_root)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "drifted from dermmobile.preprocess" in output, output


# -- dermmobile android -------------------------------------------------------------------


def _fake_app(tmp_path: Path) -> Path:
    app = tmp_path / "app_project"
    (app / "app" / "src" / "main").mkdir(parents=True)
    (app / "app" / "src" / "main" / "AndroidManifest.xml").write_text("<manifest/>\n")
    return app


def _fake_artifact(tmp_path: Path, name: str = "tiny_cnn-tflite-none.tflite", fmt: str = "tflite") -> Path:
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(b"TFL3 fake model bytes")
    manifest = golden_manifest(SMALL, "NHWC", "float32", file=name)
    manifest.format = fmt
    write_manifest(path, manifest)
    return path


def test_android_command_copies_artifact_manifest_and_golden(tmp_path, runtime):
    app = _fake_app(tmp_path)
    artifact = _fake_artifact(tmp_path)
    images = small_images(tmp_path / "images", SIZES[:2])
    installed = install_into_app(artifact, images, app, runtime=runtime)
    assets = app / "app" / "src" / "main" / "assets" / "dermmobile"
    assert installed.assets == assets
    assert (assets / artifact.name).read_bytes() == artifact.read_bytes()
    manifest = json.loads((assets / "manifest.json").read_text())
    assert manifest["file"] == artifact.name
    load_artifact(assets / "manifest.json")  # the copied pair verifies (sha256 matches)
    index = json.loads((assets / "golden" / GOLDEN_INDEX).read_text())
    assert len(index["samples"]) == 2 and index["manifest"]["sha256"] == manifest["sha256"]
    # A second install replaces the set whole and leaves no temporary folders behind.
    install_into_app(artifact, images[:1], app, runtime=runtime)
    assert len(json.loads((assets / "golden" / GOLDEN_INDEX).read_text())["samples"]) == 1
    assert sorted(p.name for p in assets.parent.iterdir()) == ["dermmobile"]


def test_android_command_refuses_bad_inputs(tmp_path, runtime):
    from dermmobile.cli import main

    app = _fake_app(tmp_path)
    images = small_images(tmp_path / "images", SIZES[:1])
    onnx = _fake_artifact(tmp_path, "m-onnx-none.onnx", fmt="onnx")
    with pytest.raises(BadInputError, match="tflite"):
        install_into_app(onnx, images, app, runtime=runtime)
    artifact = _fake_artifact(tmp_path)
    with pytest.raises(BadInputError, match="not the android_demo project"):
        install_into_app(artifact, images, tmp_path / "nowhere", runtime=runtime)
    artifact.write_bytes(b"changed after export")
    with pytest.raises(UnsafeFileError, match="sha256"):
        install_into_app(artifact, images, app, runtime=runtime)
    assert not (app / "app" / "src" / "main" / "assets" / "dermmobile").exists()
    # Through the CLI: a clear message and the bad-input exit code, no traceback.
    assert main(["android", "--artifact", str(artifact), "--images", str(images[0]), "--app", str(app)]) == 2


def test_android_module_import_is_light():
    code = "import sys, dermmobile.commands.android, dermmobile.android; print('torch' in sys.modules)"
    result = subprocess.run([str(Path(os.sys.executable)), "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_android_end_to_end_with_a_real_tflite_artifact(tmp_path, tiny_checkpoint, synthetic_root):
    """export --target tflite -> dermmobile android (the artifact's own LiteRT runtime) -> the Java core agrees."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    _require_java()
    from dermmobile.cli import main

    out = tmp_path / "export"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--target", "tflite", "--layout", "nhwc", "--out", str(out)]
    assert main([*args, "--check-data", str(synthetic_root)]) == 0
    (artifact,) = out.glob("*.tflite")
    app = _fake_app(tmp_path)
    images = sorted(synthetic_root.glob("*/*.png"))[::30]
    assert main(["android", "--artifact", str(artifact), "--images", *map(str, images), "--app", str(app)]) == 0
    golden = app / "app" / "src" / "main" / "assets" / "dermmobile" / "golden"
    index = json.loads((golden / GOLDEN_INDEX).read_text())
    assert index["runtime"] == "tflite" and index["manifest"]["input"]["layout"] == "NHWC"
    result = _run_core(CORE, golden)
    assert result.returncode == 0, result.stdout + result.stderr
