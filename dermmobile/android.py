"""The Android demo's Python side: golden samples, copying an artifact into the app, bench rows.

- `write_golden_samples` runs images through the one preprocessing spec and a Runtime and
  writes what the app must reproduce: decoded RGB bytes, the expected input tensor, the
  logits, probabilities and top-1. android_demo/preprocess-core's JUnit tests (here, no
  Android needed) and the app's instrumentation test (on a phone) check against them.
- `install_into_app` copies a verified .tflite artifact, its manifest and golden samples
  into android_demo/app/src/main/assets/dermmobile/, replacing the previous set whole.
- `check_bench_row` checks a row the app's benchmark screen writes: the one bench-row
  schema (`dermmobile.bench.schema.BenchRow`) plus what only the Android app writes.

Golden folder layout (schema "dermmobile-golden" version 1):

    golden.json           index: the artifact's manifest, the runtime, tolerances, one entry per sample
                          (with `decode`: the file's format, stored size and the spec's reduction factor)
    <id>.rgb              decoded 8-bit RGB (`spec.decode`: reduced as the spec says), row-major,
                          width x height x 3 (no header)
    <id>.input.f32        expected input tensor, float32 little-endian, the manifest's layout, batch of 1
    <id>.input.q          int8/uint8 manifests only: that tensor quantized with the input scale/zero point
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.predict import softmax, top_k

GOLDEN_SCHEMA = "dermmobile-golden"
GOLDEN_SCHEMA_VERSION = 1
GOLDEN_INDEX = "golden.json"
ASSETS_DIR = Path("app/src/main/assets/dermmobile")  # inside the app project; the app reads this folder
MANIFEST_ASSET = "manifest.json"
GOLDEN_ASSET_DIR = "golden"
# Golden images are stored as raw pixels in the APK: 4 MP is 12 MB. Larger photos are
# refused rather than silently resized (resizing would change what is being tested).
MAX_GOLDEN_PIXELS = 4_000_000
TOP_K = 3

# Tolerances the Java side applies (android_demo/preprocess-core Parity.java), written
# into golden.json so a reader sees what "matches" meant.
GOLDEN_TOLERANCES = {
    "pixel": 1e-3,  # of one 8-bit level, before normalization
    "normalized": 1e-4,  # normalized float32 input values
    "quantized_steps": 1,  # only where the float32 values differ in their last bit
    "probability": 1e-4,  # softmax of the same logits
}

# The keys of the rows the app's benchmark screen writes (android_demo BenchRow.java): a
# dermmobile.bench.schema.BenchRow, the one row schema, with the Android app's own fields.
BENCH_ROW_KEYS = (
    "source", "device", "artifact", "format", "quantization", "threads", "latency_ms", "iterations", "top1_matches_golden",
)  # fmt: skip


def check_bench_row(row: object, where: str = "android bench row") -> dict:
    """Return `row` if it is a BenchRow as the Android app writes it (source android, a tflite file, the golden check)."""
    from dermmobile.bench.schema import BenchRow
    from dermmobile.validation import validate

    if not isinstance(row, dict):
        raise BadInputError(f"{where}: expected a JSON object with keys {', '.join(BENCH_ROW_KEYS)}")
    validate(BenchRow, row, where)
    if set(row) != set(BENCH_ROW_KEYS):
        raise BadInputError(
            f"{where}: keys differ from the Android app's row (missing: {sorted(set(BENCH_ROW_KEYS) - set(row)) or 'none'}; "
            f"other: {sorted(set(row) - set(BENCH_ROW_KEYS)) or 'none'}); write it with android_demo's benchmark screen"
        )
    if row["source"] != "android" or row["format"] != "tflite":
        raise BadInputError(f"{where}: source/format are {row['source']!r}/{row['format']!r}; expected 'android'/'tflite'")
    return row


# -- golden samples -------------------------------------------------------------------------


def quantize_input(values: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    """float32 -> int8/uint8 as the app does it (float32 division, round half to even, clip)."""
    from dermmobile.targets.base import quantize

    if dtype not in ("int8", "uint8"):
        raise BadInputError(f"cannot quantize an input of dtype {dtype!r}; expected int8 or uint8")
    return quantize(values.astype(np.float32), np.dtype(dtype), scale, zero_point)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sample_id(index: int, path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40] or "image"
    return f"{index:03d}-{stem}"


def _golden_sample(index: int, path: Path, spec, layout: str, manifest, runtime, out_dir: Path) -> dict:
    """Decode one golden image, run it, write its raw files into `out_dir`; return its golden.json entry."""
    from dermmobile.fsutil import atomic_write_bytes

    dtype = manifest.input.dtype
    rgb = np.asarray(spec.decode(path))
    height, width = rgb.shape[:2]
    if width * height > MAX_GOLDEN_PIXELS:
        raise BadInputError(
            f"{path}: {width}x{height} is above the {MAX_GOLDEN_PIXELS:,} pixel limit for golden images (they are stored "
            "as raw pixels in the app); give a smaller copy of the photo"
        )
    sample_id = _sample_id(index, path)
    nchw = spec.array(rgb, "NCHW")
    tensor = nchw if layout == "NCHW" else np.ascontiguousarray(nchw.transpose(1, 2, 0))
    tensor_bytes = tensor.astype("<f4").tobytes()
    logits = np.asarray(runtime.predict(nchw[None]), dtype=np.float32).reshape(-1)
    if logits.size != len(manifest.labels):
        raise BadInputError(
            f"the runtime returned {logits.size} logits but the manifest has {len(manifest.labels)} labels; "
            "the manifest does not belong to this model"
        )
    probabilities = softmax(logits)
    ranked = top_k(probabilities, TOP_K)
    rgb_bytes = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    atomic_write_bytes(out_dir / f"{sample_id}.rgb", rgb_bytes)
    atomic_write_bytes(out_dir / f"{sample_id}.input.f32", tensor_bytes)
    entry = {
        "id": sample_id,
        "source": path.name,
        "width": int(width),
        "height": int(height),
        "decode": _decode_record(path, spec),
        "rgb": f"{sample_id}.rgb",
        "rgb_sha256": _sha256(rgb_bytes),
        "input": f"{sample_id}.input.f32",
        "input_shape": [1, *tensor.shape],
        "input_sha256": _sha256(tensor_bytes),
        "input_quantized": None,
        "input_quantized_sha256": None,
        "logits": [float(v) for v in logits],
        "probabilities": [float(p) for p in probabilities],
        "top1": ranked[0],
        "top1_label": manifest.labels[ranked[0]],
        "top3": [{"index": i, "label": manifest.labels[i], "probability": float(probabilities[i])} for i in ranked],
    }
    if dtype in ("int8", "uint8"):
        q_bytes = quantize_input(tensor, dtype, manifest.input.scale, manifest.input.zero_point).tobytes()
        atomic_write_bytes(out_dir / f"{sample_id}.input.q", q_bytes)
        entry["input_quantized"] = f"{sample_id}.input.q"
        entry["input_quantized_sha256"] = _sha256(q_bytes)
    return entry


def write_golden_samples(images: Sequence[Path], manifest, runtime, out_dir: Path) -> Path:
    """Write golden samples for `images` into `out_dir` (created; files there are replaced); return golden.json.

    `manifest` is a dermmobile.artifact.Manifest (its preprocess dict, input layout, dtype,
    scale and zero point, and labels are used); `runtime` is any Runtime (float32 NCHW in,
    logits out): the artifact's own, or the PyTorch model for tests.
    """
    from dermmobile.fsutil import atomic_write_json
    from dermmobile.preprocess import PreprocessSpec

    if not images:
        raise BadInputError("no golden images given; pass a few real photos with --images (they are bundled in the app)")
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    layout = (manifest.input.layout or "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise BadInputError(f"manifest input layout {manifest.input.layout!r} is not NCHW or NHWC; re-export the artifact")
    dtype = manifest.input.dtype
    quantized = dtype in ("int8", "uint8")
    if quantized and (manifest.input.scale is None or manifest.input.zero_point is None):
        raise BadInputError(f"manifest input is {dtype} but has no scale/zero_point; re-export the artifact")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = [_golden_sample(index, Path(path), spec, layout, manifest, runtime, out_dir) for index, path in enumerate(images)]
    index_path = out_dir / GOLDEN_INDEX
    atomic_write_json(
        index_path,
        {
            "schema": GOLDEN_SCHEMA,
            "schema_version": GOLDEN_SCHEMA_VERSION,
            "manifest": manifest.to_dict(),
            "runtime": getattr(runtime, "name", type(runtime).__name__),
            "layout": layout,
            "tolerances": GOLDEN_TOLERANCES,
            "samples": samples,
        },
    )
    return index_path


def _decode_record(path: Path, spec) -> dict:
    """How the file was decoded: format, stored size and the spec's reduction factor, which the
    Java and JavaScript tests recompute (Android's sample size, the web page's note)."""
    from PIL import Image

    from dermmobile.data import JPEG_FORMATS

    with Image.open(path) as image:  # the header only: the pixels were decoded by spec.decode
        fmt, (width, height) = image.format or "", image.size
    factor = spec.decode_factor(width, height) if fmt in JPEG_FORMATS else 1
    return {"format": fmt, "stored_width": width, "stored_height": height, "factor": factor}


# -- copying into the app ---------------------------------------------------------------------


@dataclass
class Installed:
    """What `install_into_app` put where."""

    assets: Path
    artifact: Path
    manifest: Path
    golden: Path
    samples: int


def _load_runtime(artifact):
    from dermmobile.runtime import open_runtime

    return open_runtime(artifact)  # golden samples need the artifact's own runtime, proven to run


def install_into_app(artifact_path: Path, images: Sequence[Path], app_dir: Path, runtime=None) -> Installed:
    """Copy a verified .tflite artifact, its manifest and golden samples into the app's assets.

    The new set is assembled in a temporary folder beside the assets and swapped in with
    renames, so the app never sees a mix of two artifacts. `runtime` defaults to the
    artifact's own LiteRT runtime (the tflite target); tests pass another.
    """
    from dermmobile.artifact import load_artifact
    from dermmobile.fsutil import staged_folder

    app_dir = Path(app_dir)
    if not (app_dir / "app" / "src" / "main" / "AndroidManifest.xml").is_file():
        raise BadInputError(
            f"{app_dir} is not the android_demo project (no app/src/main/AndroidManifest.xml); pass --app PATH/TO/android_demo"
        )
    artifact = load_artifact(Path(artifact_path))  # refuses a missing manifest or a sha256 mismatch
    manifest = artifact.manifest
    if manifest.format != "tflite" or artifact.path.suffix != ".tflite" or not artifact.path.is_file():
        raise BadInputError(
            f"{artifact.path} is a {manifest.format} artifact; the Android demo runs .tflite files only. "
            "Export one with `dermmobile export --target tflite`"
        )
    if runtime is None:
        runtime = _load_runtime(artifact)
    assets = app_dir / ASSETS_DIR
    for part in [app_dir / Path(*ASSETS_DIR.parts[:i]) for i in range(1, len(ASSETS_DIR.parts))]:
        if part.is_symlink():  # a planted link would put the new set (and the removal of the old) elsewhere
            raise UnsafeFileError(f"{part} is a symbolic link inside the app project; dermmobile writes only into real folders")
    with staged_folder(assets) as staging:
        shutil.copy2(artifact.path, staging / artifact.path.name)
        shutil.copy2(artifact.manifest_file, staging / MANIFEST_ASSET)
        write_golden_samples(images, manifest, runtime, staging / GOLDEN_ASSET_DIR)
    return Installed(
        assets=assets,
        artifact=assets / artifact.path.name,
        manifest=assets / MANIFEST_ASSET,
        golden=assets / GOLDEN_ASSET_DIR / GOLDEN_INDEX,
        samples=len(images),
    )
