"""Checkpoints: weights in safetensors (cannot run code) plus JSON metadata in the same file.

One `.safetensors` file carries everything an export or an app needs: arch, labels,
preprocessing spec, the arguments that made it, metrics, data provenance and a sha256
of the weights. Loading checks that the metadata matches the weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.preprocess import PreprocessSpec

FORMAT = "dermmobile-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "dermmobile"


@dataclass
class CheckpointMeta:
    arch: str
    labels: list[str]
    preprocess: dict
    args: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    weights_sha256: str = ""
    created: str = ""
    # Set only by `dermmobile qat`: the target, quantizer and source of a quantization-aware
    # trained checkpoint, whose tensors are its fake-quantize graph's state (dermmobile/qat.py).
    qat: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)


@dataclass
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
    """Write weights + metadata atomically; returns the path."""
    from safetensors.torch import save_file

    from dermmobile.fsutil import atomic_path

    # Cloned: a QAT graph shares one observer between several ops, and safetensors stores each name apart.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta.weights_sha256 = weights_digest(state)
    meta.created = meta.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(asdict(meta), default=str)})
    return path


def read_meta(path: Path) -> CheckpointMeta:
    """Read only the metadata (cheap: the safetensors header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist; train one with `dermmobile train` or `dermmobile demo`")
    if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise UnsafeFileError(
            f"{path} is a pickle-based file; dermmobile checkpoints are .safetensors with metadata and never run "
            "pickled code. To start from those weights, train with --weights PATH (read with weights_only=True)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if METADATA_KEY not in header:
        raise BadInputError(f"{path} has no dermmobile metadata; it is a bare safetensors file, use it as --weights PATH")
    try:
        raw = json.loads(header[METADATA_KEY])
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise BadInputError(
                f"{path} is format {raw.get('format')!r} version {raw.get('format_version')!r}; "
                f"this dermmobile reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        meta = CheckpointMeta(**raw)
        PreprocessSpec.from_dict(meta.preprocess)
    except BadInputError:
        raise
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{path} has malformed metadata ({exc})") from None
    if not isinstance(meta.labels, list) or len(meta.labels) < 2 or len(set(meta.labels)) != len(meta.labels):
        raise BadInputError(f"{path} metadata labels must be a list of 2+ distinct names, got {meta.labels!r}")
    return meta


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint, rebuild its model and check that metadata and weights agree."""
    from safetensors.torch import load_file

    from dermmobile.fsutil import sha256_file
    from dermmobile.models import build_model

    meta = read_meta(path)
    state = load_file(str(path))
    if weights_digest(state) != meta.weights_sha256:
        raise BadInputError(f"{path}: weights do not match the sha256 in its metadata (edited or corrupted file)")
    if meta.qat:
        from dermmobile.qat import rebuild_qat_model

        model = rebuild_qat_model(meta, state, Path(path))
        return Checkpoint(model, meta, Path(path), sha256_file(Path(path)))
    model = build_model(meta.arch, len(meta.labels), weights="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(
            f"{path}: metadata says {meta.arch} with {len(meta.labels)} labels, but the weights do not fit "
            f"({' '.join(str(exc).split())[:300]})"
        ) from None
    model.eval()
    return Checkpoint(model, meta, Path(path), sha256_file(Path(path)))
