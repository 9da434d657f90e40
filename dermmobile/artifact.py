"""The artifact manifest: everything an app or the bench needs to run an exported file.

Written as `<artifact file>.json` beside every artifact, atomically. Loading a manifest
refuses unknown schema versions, file names that leave the manifest's folder, and files
whose sha256 does not match.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.fsutil import atomic_write_json, sha256_file

SCHEMA = "dermmobile-artifact"
SCHEMA_VERSION = 1


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # float32 | float16 | int8 | uint8
    layout: str = ""  # NCHW | NHWC for images, "" for logits
    scale: float | None = None  # int8 tensors: real = (q - zero_point) * scale
    zero_point: int | None = None


@dataclass
class Manifest:
    format: str
    quantization: str
    file: str  # a plain file name in the manifest's own folder
    arch: str
    labels: list[str]
    input: TensorSpec
    output: TensorSpec
    preprocess: dict
    checkpoint_sha256: str = ""
    sha256: str = ""
    bytes: int = 0
    calibration: dict | None = None
    parity: dict | None = None
    status: str = "unchecked"  # unchecked | passed | failed | not-run
    toolchain: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    export_seconds: float | None = None
    # int8 only (None elsewhere): the images that chose and judged it, and what it computes in.
    tuning_images: dict | None = None  # chose the observer and the float layers (count, per_class, files_sha256)
    gate_images: dict | None = None  # judged the artifact once, disjoint from calibration and tuning
    float_layers: list[str] | None = None  # layers the accuracy-aware fallback left in float
    float_macs_share: float | None = None  # their share of the model's multiply-accumulates
    op_counts: dict | None = None  # compute ops in the file by precision: int8, dynamic, float, by_op
    fallback: dict | None = None  # the search: criterion, attempts, sensitivity report file
    created: str = ""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise BadInputError(f"{where}: expected a JSON object")
        if data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
            raise BadInputError(
                f"{where}: schema {data.get('schema')!r} version {data.get('schema_version')!r} is not "
                f"{SCHEMA!r} version {SCHEMA_VERSION}; re-export it with this dermmobile"
            )
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            values["input"] = TensorSpec(**_typed(values["input"], TENSOR_TYPES, f"{where} input"))
            values["output"] = TensorSpec(**_typed(values["output"], TENSOR_TYPES, f"{where} output"))
            manifest = cls(**_typed(values, MANIFEST_TYPES, where))
        except (KeyError, TypeError) as exc:
            raise BadInputError(f"{where}: malformed manifest ({exc})") from None
        if not manifest.labels or not all(isinstance(label, str) for label in manifest.labels):
            raise BadInputError(f"{where}: labels must be a non-empty list of names")
        return manifest


# The JSON type each field must have; a manifest is untrusted input.
MANIFEST_TYPES = {
    "format": str, "quantization": str, "file": str, "arch": str, "labels": list, "preprocess": dict,
    "checkpoint_sha256": str, "sha256": str, "bytes": int, "calibration": (dict, type(None)), "parity": (dict, type(None)),
    "status": str, "toolchain": dict, "notes": dict, "export_seconds": (int, float, type(None)), "created": str,
    "tuning_images": (dict, type(None)), "gate_images": (dict, type(None)), "float_layers": (list, type(None)),
    "float_macs_share": (int, float, type(None)), "op_counts": (dict, type(None)), "fallback": (dict, type(None)),
    "schema": str, "schema_version": int, "input": TensorSpec, "output": TensorSpec,
}  # fmt: skip
TENSOR_TYPES = {
    "name": str, "shape": list, "dtype": str, "layout": str, "scale": (int, float, type(None)), "zero_point": (int, type(None)),
}  # fmt: skip


def _typed(values, types: dict, where: str) -> dict:
    if not isinstance(values, dict):
        raise TypeError(f"expected an object, got {type(values).__name__}")
    for key, value in values.items():
        expected = types.get(key)
        if expected is None:
            raise TypeError(f"unknown field {key!r}")
        if not isinstance(value, expected) or (isinstance(value, bool) and expected in (int, (int, type(None)))):
            raise TypeError(f"field {key!r} has type {type(value).__name__}")
    if "shape" in values and not all(isinstance(d, int) and not isinstance(d, bool) for d in values["shape"]):
        raise TypeError("shape must be a list of integers")
    return values


def manifest_path(artifact_file: Path) -> Path:
    return Path(f"{artifact_file}.json")


def write_manifest(artifact_file: Path, manifest: Manifest) -> Path:
    """Fill size, hash and time from the file on disk, then write the manifest atomically."""
    artifact_file = Path(artifact_file)
    manifest.file = artifact_file.name
    manifest.sha256 = sha256_file(artifact_file) if artifact_file.is_file() else _dir_digest(artifact_file)
    manifest.bytes = _size(artifact_file)
    manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    target = manifest_path(artifact_file)
    atomic_write_json(target, manifest.to_dict())
    return target


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _dir_digest(path: Path) -> str:
    """Core ML packages are folders: hash their files' names and contents in order."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


@dataclass
class Artifact:
    """An exported file and its manifest, verified."""

    path: Path
    manifest: Manifest

    @property
    def manifest_file(self) -> Path:
        return manifest_path(self.path)


def _safe_child(folder: Path, name: str, where: str) -> Path:
    if not name or name != Path(name).name or name in (".", "..") or os.sep in name or "/" in name or "\\" in name:
        raise UnsafeFileError(f"{where}: file name {name!r} is not a plain name inside the manifest's folder; refused")
    candidate = folder / name
    if candidate.is_symlink():
        real = candidate.resolve()
        if folder.resolve() not in real.parents:
            raise UnsafeFileError(f"{where}: {name} is a symlink pointing outside its folder ({real}); refused")
    return candidate


def load_artifact(path: Path, verify: bool = True) -> Artifact:
    """Read a manifest (given the artifact or its .json) and verify the file it names."""
    path = Path(path)
    manifest_file = path if path.suffix == ".json" and not path.is_dir() else manifest_path(path)
    if not manifest_file.is_file():
        raise BadInputError(
            f"no manifest at {manifest_file}; artifacts are loaded through the .json written beside them by `dermmobile export`"
        )
    try:
        data = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{manifest_file}: not valid JSON ({exc})") from None
    manifest = Manifest.from_dict(data, str(manifest_file))
    artifact_file = _safe_child(manifest_file.parent, manifest.file, str(manifest_file))
    if not artifact_file.exists():
        raise BadInputError(f"{manifest_file} names {manifest.file}, which is missing from {manifest_file.parent}")
    if verify:
        actual = sha256_file(artifact_file) if artifact_file.is_file() else _dir_digest(artifact_file)
        if actual != manifest.sha256:
            raise UnsafeFileError(
                f"{artifact_file}: sha256 {actual[:16]}... does not match its manifest ({manifest.sha256[:16]}...); "
                "the file was changed or corrupted after export. Re-export it"
            )
    return Artifact(artifact_file, manifest)


def find_artifacts(folder: Path) -> list[Path]:
    """Manifest files of a folder (not recursive), in name order.

    A `.json` counts when it says it is a manifest, or when the file it would describe sits
    beside it: a damaged manifest is then listed (and refused with a reason when loaded)
    instead of silently left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"artifact folder {folder} does not exist; run `dermmobile export` first")
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".") and _looks_like_manifest(p))


def _looks_like_manifest(path: Path) -> bool:
    if path.with_suffix("").exists():
        return True
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
