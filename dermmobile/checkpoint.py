"""Checkpoints: weights in safetensors (cannot run code) plus JSON metadata in the same file.

One `.safetensors` file carries everything an export or an app needs: arch, labels,
preprocessing spec, the arguments that made it, metrics, data provenance and a sha256
of the weights. Loading checks that the metadata matches the weights.

The safetensors header and the metadata in it are parsed by `dermmobile.readers` (no
library opens the path first: a FIFO is refused, not waited on) and validated as a strict
`CheckpointMeta`; the weights, the metadata and the file's sha256 come from one read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator
from pydantic.dataclasses import dataclass

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.preprocess import PreprocessSpec
from dermmobile.readers import MAX_CHECKPOINT_HEADER_BYTES, open_regular, parse_json, read_bytes
from dermmobile.validation import SCHEMA_CONFIG, Labels, Sha256, ShortText, checked_labels_and_spec, validate

FORMAT = "dermmobile-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "dermmobile"
MAX_CHECKPOINT_BYTES = 4 << 30  # the weights are read whole (hashed and loaded from the same bytes)
RelativeName = Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class DataRecord(BaseModel):
    """The fields of `CheckpointMeta.data` that commands act on; the trainer's other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    root: Annotated[StrictStr, Field(max_length=4096)] | None = None
    files_sha256: Sha256 | None = None
    test_files: list[RelativeName] | None = None
    val_files: list[RelativeName] | None = None  # int8 export weighs these as unseen (fallback.MarginPopulation)


@dataclass(config=SCHEMA_CONFIG)
class CheckpointMeta:
    arch: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    labels: Labels
    preprocess: dict
    args: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    weights_sha256: Sha256 = ""
    created: ShortText = ""
    # Set only by `dermmobile qat`: the target, quantizer and source of a quantization-aware
    # trained checkpoint, whose tensors are its fake-quantize graph's state (dermmobile/qat.py).
    qat: dict = field(default_factory=dict)
    format: Literal["dermmobile-checkpoint"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION

    @model_validator(mode="after")
    def _meaningful(self):
        checked_labels_and_spec(self.labels, self.preprocess)
        try:
            validate(DataRecord, self.data, "data")
        except BadInputError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)


@dataclasses.dataclass
class Checkpoint:
    model: object  # torch.nn.Module in eval mode
    meta: CheckpointMeta
    path: Path | None = None
    file_sha256: str = ""


def weights_digest(state: dict) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, model, meta: CheckpointMeta) -> Path:
    """Write weights + metadata atomically (never through a link); returns the path."""
    from safetensors.torch import save

    from dermmobile.fsutil import atomic_write_bytes

    # Cloned: a QAT graph shares one observer between several ops, and safetensors stores each name apart.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta.weights_sha256 = weights_digest(state)
    meta.created = meta.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = Path(path)
    atomic_write_bytes(path, save(state, metadata={METADATA_KEY: json.dumps(asdict(meta), default=str)}))
    return path


def _header(data: bytes, path: Path) -> dict:
    """The safetensors header (tensor table and metadata) of a file's first bytes, parsed with our limits."""
    if len(data) < 8:
        raise BadInputError(f"{path} is not a readable safetensors checkpoint (only {len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_CHECKPOINT_HEADER_BYTES:
        raise BadInputError(f"{path}: safetensors header of {size:,} bytes is above the {MAX_CHECKPOINT_HEADER_BYTES:,} limit")
    if len(data) < 8 + size:
        raise BadInputError(f"{path} is not a readable safetensors checkpoint (truncated header)")
    try:
        header = parse_json(data[8 : 8 + size], "header")
    except BadInputError as exc:
        raise BadInputError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if not isinstance(header, dict):
        raise BadInputError(f"{path} is not a readable safetensors checkpoint (header is not an object)")
    return header


def _read_header_bytes(path: Path) -> bytes:
    with open_regular(path, "checkpoint") as handle:
        head = handle.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        return head + handle.read(min(size, MAX_CHECKPOINT_HEADER_BYTES + 1))


def read_meta(path: Path, data: bytes | None = None) -> CheckpointMeta:
    """Read only the metadata (cheap: the safetensors header), validated against its meaning."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise UnsafeFileError(
            f"{path} is a pickle-based file; dermmobile checkpoints are .safetensors with metadata and never run "
            "pickled code. To start from those weights, train with --weights PATH (read with weights_only=True)"
        )
    if data is None:
        try:
            data = _read_header_bytes(path)
        except BadInputError as exc:
            if "does not exist" in str(exc):
                raise BadInputError(f"{exc}; train one with `dermmobile train` or `dermmobile demo`") from None
            raise
    metadata = _header(data, path).get("__metadata__") or {}
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise BadInputError(f"{path} has no dermmobile metadata; it is a bare safetensors file, use it as --weights PATH")
    if not isinstance(metadata[METADATA_KEY], str):
        raise BadInputError(f"{path}: the dermmobile metadata is not a JSON string")
    raw = parse_json(metadata[METADATA_KEY], f"{path} metadata")
    if not isinstance(raw, dict):
        raise BadInputError(f"{path} has malformed metadata (expected a JSON object)")
    version = raw.get("format_version")
    if raw.get("format") != FORMAT or type(version) is not int or version != FORMAT_VERSION:  # True == 1 in Python
        raise BadInputError(
            f"{path} is format {raw.get('format')!r} version {raw.get('format_version')!r}; "
            f"this dermmobile reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    return validate(CheckpointMeta, raw, f"{path} has malformed metadata")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint, rebuild its model and check that metadata and weights agree.

    The file is read once: the metadata, the weights and the file's sha256 come from the same bytes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from dermmobile.models import build_model

    path = Path(path)
    meta = read_meta(path)  # refuses pickles, special files and bad metadata before the weights are read
    data = read_bytes(path, "checkpoint", MAX_CHECKPOINT_BYTES)
    meta = read_meta(path, data)
    try:
        state = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BadInputError(f"{path} is not a readable safetensors checkpoint ({' '.join(str(exc).split())[:300]})") from None
    if weights_digest(state) != meta.weights_sha256:
        raise BadInputError(f"{path}: weights do not match the sha256 in its metadata (edited or corrupted file)")
    if meta.qat:
        from dermmobile.qat import rebuild_qat_model

        return Checkpoint(rebuild_qat_model(meta, state, path), meta, path, hashlib.sha256(data).hexdigest())
    model = build_model(meta.arch, len(meta.labels), weights="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(
            f"{path}: metadata says {meta.arch} with {len(meta.labels)} labels, but the weights do not fit "
            f"({' '.join(str(exc).split())[:300]})"
        ) from None
    model.eval()
    return Checkpoint(model, meta, path, hashlib.sha256(data).hexdigest())
