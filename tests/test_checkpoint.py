"""Checkpoints: safetensors + metadata, refused when pickled, edited or inconsistent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dermmobile.checkpoint import METADATA_KEY, CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.models import build_model
from dermmobile.preprocess import DEFAULT_SPEC


def _save(path, labels=("a", "b", "c"), arch="tiny_cnn"):
    model = build_model("tiny_cnn", 3)
    meta = CheckpointMeta(arch, list(labels), DEFAULT_SPEC.to_dict(), args={"lr": 0.001}, metrics={"val_acc": 0.5})
    return save_checkpoint(path, model, meta), model


def _rewrite_metadata(path, **changes):
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = json.loads(handle.metadata()[METADATA_KEY])
    raw.update(changes)
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(raw)})


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path, model = _save(tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.meta.labels == ["a", "b", "c"] and loaded.meta.args == {"lr": 0.001}
    assert loaded.meta.spec == DEFAULT_SPEC
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert len(loaded.file_sha256) == 64 and not loaded.model.training


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save({"model": build_model("tiny_cnn", 3)}, tmp_path / "full.pt")
    with pytest.raises(UnsafeFileError, match="never run pickled code"):
        read_meta(tmp_path / "full.pt")


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_meta(tmp_path / "nope.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(BadInputError, match="no dermmobile metadata"):
        read_meta(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BadInputError, match="not a readable"):
        read_meta(tmp_path / "junk.safetensors")


def test_metadata_that_does_not_match_weights_is_refused(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    _rewrite_metadata(path, labels=["a", "b", "c", "d"])
    with pytest.raises(BadInputError, match="4 labels, but the weights do not fit"):
        load_checkpoint(path)


def test_edited_weights_are_detected(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state["10.bias"] = state["10.bias"] + 1
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(BadInputError, match="do not match the sha256"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "changes, message",
    [({"format_version": 99}, "version 99"), ({"labels": ["a", "a"]}, "distinct"), ({"preprocess": {"crop": 999}}, "crop")],
)
def test_malformed_metadata_is_refused(tmp_path, changes, message):
    path, _ = _save(tmp_path / "m.safetensors")
    _rewrite_metadata(path, **changes)
    with pytest.raises(BadInputError, match=message):
        read_meta(path)
