"""The artifact manifest: everything an app or the bench needs to run an exported file.

Written as `<artifact file>.json` beside every artifact, atomically. A manifest is
untrusted input: it is read through `dermmobile.readers` (regular file, bounded size and
depth) and validated against its meaning (`Manifest` is a strict pydantic dataclass: types,
ranges, known sets, shapes that fit the crop, layout and labels). Loading also refuses
unknown schema versions, file names that leave the manifest's folder, files whose sha256
does not match, and parity that was measured on another file or checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StrictFloat, model_validator
from pydantic.dataclasses import dataclass

from dermmobile.errors import BadInputError, UnsafeFileError
from dermmobile.fsutil import atomic_write_json, sha256_file
from dermmobile.readers import MAX_MANIFEST_BYTES, check_regular, read_json
from dermmobile.targets.base import QUANTIZATIONS
from dermmobile.validation import (
    SCHEMA_CONFIG,
    Count,
    Labels,
    Name,
    NonNegative,
    Sha256,
    ShortText,
    checked_labels_and_spec,
    validate,
)

SCHEMA = "dermmobile-artifact"
SCHEMA_VERSION = 1
STATUSES = ("unchecked", "passed", "failed", "not-run")
PACKAGE_SUFFIX = ".mlpackage"  # the one artifact that is a folder (a Core ML package)
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}  # zero points of quantized tensors

Dimension = Annotated[int, Field(strict=True, ge=1, le=1 << 20)]


@dataclass(config=SCHEMA_CONFIG)
class TensorSpec:
    name: Name
    shape: Annotated[list[Dimension], Field(min_length=1, max_length=8)]
    dtype: Literal["float32", "float16", "int8", "uint8"]
    layout: Literal["NCHW", "NHWC", ""] = ""  # NCHW | NHWC for images, "" for logits
    scale: Annotated[float, Field(strict=True, gt=0)] | None = None  # int8 tensors: real = (q - zero_point) * scale
    zero_point: Annotated[int, Field(strict=True)] | None = None

    @model_validator(mode="after")
    def _quantization_fits_dtype(self):
        if self.dtype in INT_RANGES:
            low, high = INT_RANGES[self.dtype]
            if self.scale is None or self.zero_point is None or not low <= self.zero_point <= high:
                raise ValueError(f"a {self.dtype} tensor needs a scale > 0 and a zero_point in [{low}, {high}]")
        elif self.scale is not None or self.zero_point is not None:
            raise ValueError(f"a {self.dtype} tensor has no scale or zero_point")
        return self


@dataclass(config=SCHEMA_CONFIG)
class Manifest:
    format: Annotated[str, Field(strict=True, pattern=r"^[a-z][a-z0-9_-]{0,31}$")]  # a target name; the registry decides
    quantization: Literal[QUANTIZATIONS]
    file: ShortText  # a plain file name in the manifest's own folder (checked on load)
    arch: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    labels: Labels
    input: TensorSpec
    output: TensorSpec
    preprocess: dict
    checkpoint_sha256: Sha256 = ""
    sha256: Sha256 = ""
    bytes: Count = 0
    calibration: dict | None = None
    parity: dict | None = None
    status: Literal[STATUSES] = "unchecked"
    toolchain: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    export_seconds: NonNegative | None = None
    # int8 only (None elsewhere): the images that chose and judged it, and what it computes in.
    tuning_images: dict | None = None  # chose the observer and the float layers (count, per_class, files_sha256)
    gate_images: dict | None = None  # judged the artifact once, disjoint from calibration and tuning
    float_layers: Annotated[list[Name], Field(max_length=100_000)] | None = None  # left in float (logits layer, fallback)
    float_macs_share: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None  # their share of the model's MACs
    op_counts: dict | None = None  # compute ops in the file by precision: int8, dynamic, float, by_op
    fallback: dict | None = None  # the search: criterion, attempts, sensitivity report file
    # int8 of a QAT checkpoint only: its source float checkpoint, schedule and quantizer, and what export did not do
    qat: dict | None = None
    created: ShortText = ""
    schema: Literal["dermmobile-artifact"] = SCHEMA
    schema_version: Literal[1] = SCHEMA_VERSION

    @model_validator(mode="after")
    def _consistent(self):
        """Labels, tensor shapes and the preprocessing spec must describe one model."""
        crop = checked_labels_and_spec(self.labels, self.preprocess).crop
        layout = self.input.layout or "NCHW"
        expected = [3, crop, crop] if layout == "NCHW" else [crop, crop, 3]
        if len(self.input.shape) != 4 or self.input.shape[1:] != expected:
            raise ValueError(f"input shape {self.input.shape} does not fit a {crop}x{crop} RGB crop in {layout} layout")
        if len(self.output.shape) != 2 or self.output.shape[1] != len(self.labels):
            raise ValueError(f"output shape {self.output.shape} does not give one logit per label ({len(self.labels)} labels)")
        if self.output.layout:
            raise ValueError(f"the output holds logits, it has no image layout (got {self.output.layout!r})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "manifest") -> Manifest:
        """Validate untrusted manifest JSON against its meaning; BadInputError names the field."""
        if not isinstance(data, dict):
            raise BadInputError(f"{where}: expected a JSON object")
        version = data.get("schema_version")
        if data.get("schema") != SCHEMA or type(version) is not int or version != SCHEMA_VERSION:  # True == 1 in Python
            raise BadInputError(
                f"{where}: schema {data.get('schema')!r} version {data.get('schema_version')!r} is not "
                f"{SCHEMA!r} version {SCHEMA_VERSION}; re-export it with this dermmobile"
            )
        return validate(cls, data, f"{where}: malformed manifest")


def manifest_path(artifact_file: Path) -> Path:
    return Path(f"{artifact_file}.json")


def write_manifest(artifact_file: Path, manifest: Manifest, expected_sha256: str | None = None) -> Path:
    """Fill size, hash and time from the file on disk, check the result, then write the manifest atomically.

    `expected_sha256`: the hash of the file this run wrote; if the file on disk differs, another
    writer replaced it and the manifest would describe a file this run never made, so nothing is written.
    A manifest this dermmobile would refuse to load is never written either.
    """
    from dermmobile.errors import ExportFailedError

    artifact_file = Path(artifact_file)
    manifest.file = artifact_file.name
    manifest.sha256 = artifact_digest(artifact_file)
    if expected_sha256 is not None and manifest.sha256 != expected_sha256:
        raise ExportFailedError(
            f"{artifact_file} changed on disk before its manifest was written (another export into the same folder?); "
            "no manifest written. Export again, one run per folder"
        )
    manifest.bytes = _size(artifact_file)
    manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = manifest.to_dict()
    try:
        Manifest.from_dict(record, str(artifact_file))
    except BadInputError as exc:
        raise ExportFailedError(f"refusing to write a manifest this dermmobile would not load: {exc}") from None
    target = manifest_path(artifact_file)
    atomic_write_json(target, record, allow_nan=False)
    return target


def artifact_digest(path: Path) -> str:
    """sha256 of an artifact file, or of a Core ML package folder's files."""
    return sha256_file(path, "artifact") if not Path(path).is_dir() else _dir_digest(Path(path))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _dir_digest(path: Path) -> str:
    """Core ML packages are folders: hash their files' names and contents in order. Links and special files are refused."""
    import hashlib

    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        if entry.is_symlink():
            raise UnsafeFileError(f"{entry}: a symbolic link inside the package {path}; packages hold plain files only")
        if entry.is_dir():
            continue
        digest.update(entry.relative_to(path).as_posix().encode() + b"\0" + sha256_file(entry, "package file").encode())
    return digest.hexdigest()


@dataclasses.dataclass
class Artifact:
    """An exported file and its manifest, verified."""

    path: Path
    manifest: Manifest

    @property
    def manifest_file(self) -> Path:
        return manifest_path(self.path)


def plain_file_name(name: str) -> bool:
    """A name that stays in its folder: no separators, not . or .., no control characters (a NUL would not even open)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\") and name.isprintable()


def _safe_child(folder: Path, name: str, where: str) -> Path:
    if not plain_file_name(name):
        raise UnsafeFileError(f"{where}: file name {name!r} is not a plain name inside the manifest's folder; refused")
    candidate = folder / name
    if candidate.is_symlink():
        if candidate.exists() and not (candidate.is_file() or candidate.is_dir()):
            check_regular(candidate, f"{where}: the artifact")  # a link to /dev/zero: say what it is
        real = candidate.resolve()
        if folder.resolve() not in real.parents:
            raise UnsafeFileError(f"{where}: {name} is a symlink pointing outside its folder ({real}); refused")
    return candidate


def load_artifact(path: Path, verify: bool = True) -> Artifact:
    """Read a manifest (given the artifact or its .json), validate it against its meaning and verify the file it names."""
    path = Path(path)
    manifest_file = path if path.suffix == ".json" and not path.is_dir() else manifest_path(path)
    if not os.path.lexists(manifest_file):
        if path.suffix == ".json":  # a folder named like a manifest, not a Core ML package
            raise BadInputError(f"manifest {path} is a folder, not a regular file; give the .json written by `dermmobile export`")
        raise BadInputError(
            f"no manifest at {manifest_file}; artifacts are loaded through the .json written beside them by `dermmobile export`"
        )
    data = read_json(manifest_file, "manifest", MAX_MANIFEST_BYTES)
    manifest = Manifest.from_dict(data, str(manifest_file))
    _check_format(manifest, manifest_file)
    artifact_file = _safe_child(manifest_file.parent, manifest.file, str(manifest_file))
    if not os.path.lexists(artifact_file):
        raise BadInputError(f"{manifest_file} names {manifest.file}, which is missing from {manifest_file.parent}")
    if artifact_file.is_dir() and artifact_file.suffix != PACKAGE_SUFFIX:
        check_regular(artifact_file, f"{manifest_file} names {manifest.file}, which")  # only Core ML packages are folders
    if verify:
        actual = artifact_digest(artifact_file)
        if actual != manifest.sha256:
            raise UnsafeFileError(
                f"{artifact_file}: sha256 {actual[:16]}... does not match its manifest ({manifest.sha256[:16]}...); "
                "the file was changed or corrupted after export. Re-export it"
            )
        _check_binding(manifest, manifest_file)
    return Artifact(artifact_file, manifest)


def _check_format(manifest: Manifest, where: Path) -> None:
    from dermmobile.targets import target_module

    try:
        target_module(manifest.format)
    except BadInputError as exc:
        raise BadInputError(f"{where}: format: {exc}") from None


def _check_binding(manifest: Manifest, where: Path) -> None:
    """The parity recorded in a manifest must have been measured on this file, against this checkpoint.

    Two exports of different checkpoints into one folder could otherwise leave a manifest
    whose hash matches the file but whose parity (or labels) came from the other run.
    Manifests written before these fields existed carry neither and pass.
    """
    parity = manifest.parity or {}
    for key, expected in (("artifact_sha256", manifest.sha256), ("checkpoint_sha256", manifest.checkpoint_sha256)):
        recorded = parity.get(key)
        if recorded is not None and recorded != expected:
            raise UnsafeFileError(
                f"{where}: its parity check was measured with {key.split('_')[0]} sha256 {str(recorded)[:16]}..., "
                f"but the manifest describes {expected[:16]}...; the manifest mixes two exports. Re-export into an empty folder"
            )


def find_artifacts(folder: Path) -> list[Path]:
    """Manifest files of a folder (not recursive), in name order.

    A `.json` counts when it says it is a manifest, or when the file it would describe sits
    beside it: a damaged manifest is then listed (and refused with a reason when loaded)
    instead of silently left out. So is a `.json` that is not a regular file (a FIFO, a
    device): it is never opened here, and loading it says what it is.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"artifact folder {folder} does not exist or is not a folder; run `dermmobile export` first")
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".") and _looks_like_manifest(p))


def _looks_like_manifest(path: Path) -> bool:
    if os.path.lexists(path.with_suffix("")):
        return True
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return True
        data = read_json(path, "manifest", MAX_MANIFEST_BYTES)
    except (OSError, BadInputError):
        return False
    return isinstance(data, dict) and data.get("schema") == SCHEMA
