"""Property-based fuzzing (hypothesis, bounded time) of the two readers that take untrusted files.

Whatever bytes arrive, the image loader returns an RGB image or raises BadImageError,
and the manifest reader returns a manifest or raises BadInputError; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermmobile.artifact import load_artifact
from dermmobile.data import decode_image
from dermmobile.errors import BadImageError, BadInputError
from dermmobile.preprocess import PreprocessSpec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
SPEC = PreprocessSpec(resize=20, crop=16)


def _seed_images() -> list[bytes]:
    out = []
    for fmt, mode in [
        ("PNG", "RGB"),
        ("JPEG", "RGB"),
        ("PNG", "P"),
        ("PNG", "I;16"),
        ("GIF", "L"),
        ("BMP", "RGB"),
        ("TIFF", "CMYK"),
    ]:
        buffer = io.BytesIO()
        image = Image.new(mode if mode != "I;16" else "I;16", (9, 7))
        image.save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


def _check_image_bytes(tmp_path, blob: bytes) -> None:
    path = tmp_path / "fuzz.img"
    path.write_bytes(blob)
    try:
        image = decode_image(path, max_pixels=4_000_000)
    except BadImageError:
        return
    assert image.mode == "RGB"
    array = SPEC.array(np.asarray(image))
    assert array.shape == (3, 16, 16) and np.isfinite(array).all()


@FUZZ
@given(blob=mutated_images())
def test_image_loader_survives_mutated_files(tmp_path_factory, blob):
    _check_image_bytes(tmp_path_factory.mktemp("img"), blob)


@FUZZ
@given(blob=st.binary(max_size=512))
def test_image_loader_survives_random_bytes(tmp_path_factory, blob):
    _check_image_bytes(tmp_path_factory.mktemp("img"), blob)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
BASE = {
    "schema": "dermmobile-artifact",
    "schema_version": 1,
    "format": "onnx",
    "quantization": "none",
    "file": "m.onnx",
    "arch": "tiny_cnn",
    "labels": ["a", "b"],
    "input": {"name": "image", "shape": [1, 3, 8, 8], "dtype": "float32"},
    "output": {"name": "logits", "shape": [1, 2], "dtype": "float32"},
    "preprocess": {},
    "sha256": "",
}


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(sorted(BASE)), json_values, max_size=4),
    raw=st.one_of(st.none(), st.text(max_size=64)),
)
def test_manifest_reader_survives_arbitrary_json(tmp_path_factory, changes, raw):
    folder = tmp_path_factory.mktemp("manifest")
    (folder / "m.onnx").write_bytes(b"x")
    manifest = folder / "m.onnx.json"
    manifest.write_text(raw if raw is not None else json.dumps(BASE | changes))
    with contextlib.suppress(BadInputError):  # UnsafeFileError is a BadInputError too
        load_artifact(manifest)
