"""Manifests: written atomically, and refused when they lie, escape their folder or are malformed."""

from __future__ import annotations

import json
import os

import pytest

from dermmobile.artifact import Manifest, TensorSpec, load_artifact, manifest_path, write_manifest
from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.preprocess import DEFAULT_SPEC


def _manifest() -> Manifest:
    return Manifest(
        format="onnx",
        quantization="none",
        file="",
        arch="tiny_cnn",
        labels=["a", "b"],
        input=TensorSpec("image", [1, 3, 224, 224], "float32", "NCHW"),
        output=TensorSpec("logits", [1, 2], "float32"),
        preprocess=DEFAULT_SPEC.to_dict(),
    )


@pytest.fixture
def artifact_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    write_manifest(path, _manifest())
    return path


def _edit(path, **changes):
    manifest = manifest_path(path)
    data = json.loads(manifest.read_text())
    data.update(changes)
    manifest.write_text(json.dumps(data))


def test_round_trip_and_hash(artifact_file):
    artifact = load_artifact(artifact_file)
    assert artifact.manifest.bytes == 11 and artifact.manifest.file == "m.onnx"
    assert load_artifact(manifest_path(artifact_file)).path == artifact_file
    assert not list(artifact_file.parent.glob("*.partial"))


def test_changed_file_is_refused(artifact_file):
    artifact_file.write_bytes(b"model bytez")
    with pytest.raises(UnsafeFileError, match="does not match its manifest"):
        load_artifact(artifact_file)


@pytest.mark.parametrize("name", ["../m.onnx", "/etc/passwd", "sub/m.onnx", "..", ""])
def test_file_names_that_escape_the_folder_are_refused(artifact_file, name):
    _edit(artifact_file, file=name)
    with pytest.raises(UnsafeFileError, match="not a plain name"):
        load_artifact(artifact_file)


def test_symlink_pointing_outside_is_refused(tmp_path, artifact_file):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.onnx"
    outside.write_bytes(b"model bytes")
    link = artifact_file.parent / "link.onnx"
    os.symlink(outside, link)
    _edit(artifact_file, file="link.onnx")
    with pytest.raises(UnsafeFileError, match="symlink pointing outside"):
        load_artifact(artifact_file)


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ("[]", "expected a JSON object"), (None, "version 7")],
)
def test_malformed_or_unknown_schema_is_refused(artifact_file, content, message):
    if content is None:
        _edit(artifact_file, schema_version=7)
    else:
        manifest_path(artifact_file).write_text(content)
    with pytest.raises(BadInputError, match=message):
        load_artifact(artifact_file)


def test_missing_fields_are_refused(artifact_file):
    data = json.loads(manifest_path(artifact_file).read_text())
    del data["input"]
    manifest_path(artifact_file).write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="malformed manifest"):
        load_artifact(artifact_file)


def test_find_artifacts_lists_damaged_manifests_instead_of_hiding_them(artifact_file, tmp_path):
    from dermmobile.artifact import find_artifacts

    (tmp_path / "notes.json").write_text('{"not": "a manifest"}')
    (tmp_path / "broken.onnx").write_bytes(b"x")
    (tmp_path / "broken.onnx.json").write_text("{truncated")
    assert [p.name for p in find_artifacts(tmp_path)] == ["broken.onnx.json", "m.onnx.json"]
    with pytest.raises(BadInputError, match="not valid JSON"):
        load_artifact(tmp_path / "broken.onnx.json")
