"""Image folders: scanning, safe decoding, stratified splits, k-fold and calibration sampling.

Every split here is deterministic and *per class*: a file's place depends only on the
seed, its class and its own name, so adding images to one class never moves another
class's images between train, validation and test.

`held_out` is the one answer to "which images of this folder did the checkpoint not train
on?": export, evaluate and bench all ask it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermmobile.errors import BadImageError, BadInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# 40 megapixels: above any phone photo we expect, far below a decompression bomb.
MAX_PIXELS = 40_000_000
# The memory one image's decode may hold (`decode_bytes`), checked before its pixels are
# decoded. Anything under the pixel cap fits (at most 8 bytes a pixel plus the strips: 340 MB).
MAX_DECODE_BYTES = 512 * 2**20
# Pixels per strip when converting a decoded image to RGB (see to_rgb).
STRIP_PIXELS = 1 << 20
# A strip's temporaries: up to five 4-byte copies of it (crop, white, composite, RGB; or
# the 16-bit path's uint32 arrays).
STRIP_BYTES_PER_PIXEL = 20
JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a JPEG with extra frames (many phone cameras)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    """An ImageFolder layout: `root/<class name>/<image>`, classes sorted by name."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counter = Counter(s.label for s in self.samples)
        return {name: counter.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, indices) -> list[Sample]:
        return [self.samples[i] for i in indices]


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


def scan_image_folder(root: Path, expected_classes: list[str] | None = None) -> ImageFolder:
    """List the images of an ImageFolder without decoding them.

    Hidden folders and files (".git", ".ipynb_checkpoints", "__MACOSX") are skipped; files
    whose extension is not an image are listed in `skipped`. With `expected_classes`,
    a different class list is an error that names the difference.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(
            f"data folder {root} does not exist or is not a folder; expected an ImageFolder layout root/<class name>/<image>.jpg"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    classes = [p.name for p in class_dirs]
    if not classes:
        raise BadInputError(f"{root} has no class folders; expected root/<class name>/<image>.jpg (one sub-folder per class)")
    if expected_classes is not None:
        check_same_classes(list(expected_classes), classes, "the model's labels", str(root))
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if any(_hidden(part) for part in path.relative_to(class_dir).parts):
                continue
            if path.is_dir():
                continue
            if not path.is_file():  # a FIFO, device or socket would hang or feed the decoder forever
                skipped.append((path, "not a regular file"))
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append(Sample(path, label))
            else:
                skipped.append((path, f"not an image extension ({path.suffix or 'none'})"))
    if not samples:
        raise BadInputError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageFolder(root, classes, samples, skipped)


def check_same_classes(expected: list[str], found: list[str], expected_name: str, found_name: str) -> None:
    """Raise if two class lists differ, naming what is missing, extra or reordered."""
    if expected == found:
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing from {found_name}: {', '.join(missing)}")
    if extra:
        parts.append(f"not in {expected_name}: {', '.join(extra)}")
    if not parts:
        parts.append(f"same names in a different order: {found} vs {expected}")
    raise BadInputError(
        f"class lists differ between {expected_name} and {found_name} ({'; '.join(parts)}). "
        "Labels would silently change meaning; use folders with the same class names."
    )


def decode_image(
    path: Path, max_pixels: int = MAX_PIXELS, min_side: int | None = None, max_bytes: int = MAX_DECODE_BYTES
) -> Image.Image:
    """Open an image file as 8-bit RGB, upright, or raise BadImageError naming the problem.

    - EXIF orientation is applied (phone photos are often stored sideways).
    - 16-bit greyscale is scaled to 8 bits (value / 257), not clipped.
    - CMYK goes through Pillow's conversion; palette and alpha images are composited on
      white, so transparent pixels do not turn black.
    - `min_side` (the preprocessing spec's reduced decode): a JPEG is decoded reduced in
      the DCT domain by the largest f of 8, 4, 2, 1 with min(W, H) // f >= min_side, to
      (ceil(W / f), ceil(H / f)). Other formats have no reduced decode and are read whole.
    - Refused before their pixels are decoded: more than `max_pixels` stored pixels (a
      decompression bomb), or a decode that would hold more than `max_bytes` of memory
      (`decode_bytes`: the decoded image plus one copy, conversions run in strips).
    """
    from dermmobile.readers import open_regular, regular_file_problem

    path = Path(path)
    try:
        if problem := regular_file_problem(path):  # a FIFO would hang Pillow, /dev/zero would feed it forever
            raise BadImageError(path, problem)
        if path.stat().st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path, "image") as handle, Image.open(handle) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImageError(
                        path, f"{width}x{height} pixels is above the {max_pixels:,} pixel cap (decompression bomb?)"
                    )
                if min_side is not None and img.format in JPEG_FORMATS:
                    _draft(img, path, min_side)
                needed = decode_bytes(img)
                if needed > max_bytes:
                    raise BadImageError(
                        path,
                        f"decoding this {img.size[0]}x{img.size[1]} {img.mode} image needs about {needed / 2**20:,.0f} MiB, "
                        f"above the {max_bytes / 2**20:,.0f} MiB per-image memory budget; give a smaller copy of the image",
                    )
                img.load()
                if img.readonly:  # memory-mapped from the file: take the pixels out before the file can change
                    img = img.copy()
                return to_rgb(img)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"decompression bomb refused ({exc})") from None
    except MemoryError:
        raise BadImageError(path, "out of memory while decoding; give a smaller copy of the image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, f"corrupt or truncated image ({exc})") from None


def _draft(img: Image.Image, path: Path, min_side: int) -> None:
    """Ask libjpeg for the spec's DCT-domain reduction; check it gave exactly that size."""
    from dermmobile.preprocess import reduced_decode_factor

    width, height = img.size
    factor = reduced_decode_factor(width, height, min_side)
    if factor == 1:
        return
    img.draft(None, (min_side, min_side))  # Pillow picks the same f: largest of 8, 4, 2, 1 with min(W, H) // f >= min_side
    expected = (-(-width // factor), -(-height // factor))
    if img.size != expected:
        raise BadImageError(path, f"the JPEG decoder gave {img.size} for a 1/{factor} reduced decode, expected {expected}")


# Bytes per pixel of Pillow's in-memory modes (every mode not listed takes 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decode_bytes(img: Image.Image) -> int:
    """Most memory decoding `img` (its size and mode as opened) and `to_rgb` hold at once:
    the decoded image and either its EXIF-rotated copy or the RGB image built from it
    plus one strip's temporaries."""
    width, height = img.size
    decoded = width * height * _MODE_BYTES.get(img.mode, 4)
    rgb = 0 if img.mode == "RGB" else width * height * 4 + _strip_rows(width) * width * STRIP_BYTES_PER_PIXEL
    return decoded + max(decoded, rgb)


def _strip_rows(width: int) -> int:
    return max(1, STRIP_PIXELS // width)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to upright 8-bit RGB (see decode_image). `img` is rotated in place.

    Every conversion here is per pixel, so it runs on strips of about STRIP_PIXELS pasted
    into one RGB image: a 40 MP RGBA photo needs the decoded image and the result, not the
    four full-size copies (RGBA, white background, composite, RGB) a whole-image pass makes.
    """
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode == "RGB":
        return img
    divisor = 257  # 16-bit levels to 8 bits
    if img.mode == "I":
        low, high = img.getextrema()
        if low >= 0 and high <= 255:  # 8-bit values stored in 32-bit integers: keep them
            divisor = 1
    width, height = img.size
    out = Image.new("RGB", img.size)
    rows = _strip_rows(width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        out.paste(_strip_to_rgb(img.crop(box), divisor), box)
    return out


def _strip_to_rgb(img: Image.Image, divisor: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.uint32) // divisor
        img = Image.fromarray(np.minimum(array, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        array = np.nan_to_num(np.asarray(img, dtype=np.float32))
        img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _rank(seed: int, sample: Sample, root: Path | None) -> str:
    name = sample.path.name if root is None else sample.path.relative_to(root).as_posix()
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _per_class_order(samples: list[Sample], seed: int) -> dict[int, list[int]]:
    """Indices of each class, ordered by a seeded hash of the file name alone."""
    by_class: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        by_class.setdefault(sample.label, []).append(index)
    return {label: sorted(indices, key=lambda i: _rank(seed, samples[i], None)) for label, indices in sorted(by_class.items())}


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def stratified_split(samples: list[Sample], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split each class into train/validation/test by a seeded hash of file names.

    `test_fraction` of each class is held out first, then `val_fraction` of the rest is
    validation (the paper's 90:10 train/validation split beside a held-out test set).
    Each non-empty part gets at least one image per class when the class has three or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise BadInputError(f"split fractions val={val_fraction}, test={test_fraction} must each be in [0, 1) and sum below 1")
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for order in _per_class_order(samples, seed).values():
        n = len(order)
        n_test = _at_least_one(n * test_fraction, test_fraction, n)
        n_val = _at_least_one((n - n_test) * val_fraction, val_fraction, n - n_test)
        test += order[:n_test]
        val += order[n_test : n_test + n_val]
        train += order[n_test + n_val :]
    return Split(sorted(train), sorted(val), sorted(test))


def _at_least_one(share: float, fraction: float, available: int) -> int:
    if fraction == 0 or available < 3:
        return 0 if fraction == 0 or available < 2 else min(1, available - 1)
    return max(1, round(share))


def kfold_indices(samples: list[Sample], folds: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Stratified k-fold: (train indices, validation indices) per fold, each class dealt round-robin."""
    if folds < 2:
        raise BadInputError(f"--folds must be 2 or more, got {folds}")
    smallest = min(Counter(s.label for s in samples).values())
    if smallest < folds:
        raise BadInputError(f"{folds} folds need at least {folds} images per class; the smallest class has {smallest}")
    assignment = [0] * len(samples)
    for order in _per_class_order(samples, seed).values():
        for position, index in enumerate(order):
            assignment[index] = position % folds
    return [
        ([i for i, f in enumerate(assignment) if f != k], [i for i, f in enumerate(assignment) if f == k]) for k in range(folds)
    ]


@dataclass(frozen=True)
class CalibrationRecord:
    """What a calibration set was made of, stored in every quantized artifact's manifest."""

    count: int
    per_class: dict[str, int]
    files_sha256: str
    source: str
    seed: int

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "per_class": self.per_class,
            "files_sha256": self.files_sha256,
            "source": self.source,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class HeldOut:
    """The images of a folder that a checkpoint did not train on, and how that was decided."""

    samples: list[Sample]
    split: str  # "test": the checkpoint's recorded held-out files; "all": every image of the folder
    unseen: bool  # True when no chosen image was used in training
    note: str

    def info(self) -> dict:
        return {"split": self.split, "unseen": self.unseen, "note": self.note}


HELD_OUT_SPLITS = ("auto", "test", "all")


def is_training_root(folder: ImageFolder, data_record: dict | None) -> bool:
    """True when `folder` is the one the checkpoint was trained on: the same path, or the same file list moved elsewhere."""
    record = data_record or {}
    recorded = record.get("root")
    try:
        if recorded and Path(recorded).resolve() == folder.root.resolve():
            return True
    except (OSError, RuntimeError, TypeError):  # an unresolvable recorded path is simply another folder
        pass
    digest = record.get("files_sha256")
    return bool(digest) and digest == files_digest(s.path.relative_to(folder.root) for s in folder.samples)


def held_out(folder: ImageFolder, data_record: dict | None, split: str = "auto") -> HeldOut:
    """Which images of `folder` a checkpoint (its `meta.data` record) has not trained on.

    split "auto": the recorded held-out test files when `folder` is the training root; every
    image of any other folder (none was seen); every image, flagged as seen, when the training
    root records no test files. "test" insists on the recorded test files and refuses
    otherwise. "all" takes every image. Recorded files missing from the folder are refused:
    a held-out set that silently shrank would report a number for other images.
    """
    if split not in HELD_OUT_SPLITS:
        raise BadInputError(f"unknown split {split!r}; valid: {', '.join(HELD_OUT_SPLITS)}")
    if split == "all":
        return HeldOut(folder.samples, "all", not is_training_root(folder, data_record), "every image of the folder")
    own = is_training_root(folder, data_record)
    test_files = list((data_record or {}).get("test_files") or [])
    if not (own and test_files):
        if split == "test":
            problem = (
                "the checkpoint records no held-out test files"
                if own
                else f"{folder.root} is not the folder the checkpoint was trained on ({(data_record or {}).get('root')})"
            )
            raise BadInputError(f"no held-out test split here: {problem}; use --split all to take every image")
        if own:
            note = "the training folder, but the checkpoint records no held-out test files: every image (some seen in training)"
            return HeldOut(folder.samples, "all", False, note)
        return HeldOut(folder.samples, "all", True, "not the checkpoint's training folder: every image is unseen")
    by_name = {s.path.relative_to(folder.root).as_posix(): s for s in folder.samples}
    missing = [name for name in test_files if name not in by_name]
    if missing:
        raise BadInputError(
            f"{len(missing)} of the {len(test_files)} held-out test files recorded in the checkpoint are missing from "
            f"{folder.root} (first: {missing[0]}); restore them, or use --split all to take every image"
        )
    wanted = set(test_files)
    chosen = [s for s in folder.samples if s.path.relative_to(folder.root).as_posix() in wanted]
    return HeldOut(chosen, "test", True, "the held-out test files recorded in the checkpoint")


def files_digest(paths) -> str:
    """A hash of a list of file names (sorted), to tell two image sets apart."""
    joined = "\n".join(sorted(Path(p).as_posix() for p in paths))
    return hashlib.sha256(joined.encode()).hexdigest()


def balanced_sample(samples: list[Sample], count: int, seed: int = 0) -> list[Sample]:
    """Take `count` samples dealing one class at a time, so every class is represented."""
    if count <= 0:
        raise BadInputError(f"calibration count must be positive, got {count}")
    queues = [list(order) for order in _per_class_order(samples, seed).values()]
    taken: list[Sample] = []
    while len(taken) < count and any(queues):
        for queue in queues:
            if queue and len(taken) < count:
                taken.append(samples[queue.pop(0)])
    return taken


@dataclass
class Int8Splits:
    """The three disjoint image sets of an int8 export.

    calibration: sets the activation ranges. tuning: chooses (observer, layers left in float).
    gate: judges the final artifact once and is never used to choose anything.
    """

    root: Path
    classes: list[str]
    calibration: list[Sample]
    tuning: list[Sample]
    gate: list[Sample]
    gate_root: Path
    unseen_gate: frozenset[str]  # gate files (relative to gate_root) that no training run saw
    note: str
    # calibration and tuning files (relative to root) that training never fitted: its validation files, or every
    # file of a folder it was not trained on (fallback.MarginPopulation weighs them as the gate's unseen share)
    unseen_chosen: frozenset[str] = frozenset()

    def records(self, seed: int) -> dict[str, dict]:
        """Manifest records of the three sets (count, per-class counts, hash of the file list)."""
        sets = {"calibration": self.calibration, "tuning": self.tuning, "gate": self.gate}
        roots = {"calibration": self.root, "tuning": self.root, "gate": self.gate_root}
        out = {name: calibration_record(taken, self.classes, roots[name], seed).as_dict() for name, taken in sets.items()}
        out["gate"] |= {"unseen_by_training": len(self.unseen_gate), "note": self.note}
        return out


def int8_splits(folder: ImageFolder, data_record: dict | None, calib_count: int, tune_count: int, seed: int = 0,
                check: ImageFolder | None = None) -> Int8Splits:  # fmt: skip
    """Calibration, tuning and gate images for an int8 export, disjoint, each class-balanced.

    Calibration and tuning come from the images `folder` does not hold out (data.held_out):
    training images when `folder` is the checkpoint's training root, so the held-out test
    files are never used to choose and always judge. The gate is the held-out files plus
    what calibration and tuning left; with `check` (--check-data), it is `check`'s held-out
    images instead, less any file also used to choose.
    """
    kept = held_out(folder, data_record)
    reserved = set(kept.samples) if kept.split == "test" else set()
    pool = [s for s in folder.samples if s not in reserved]
    calibration = balanced_sample(pool, calib_count, seed)
    rest = [s for s in pool if s not in set(calibration)]
    # Without held-out files to judge on, the gate keeps at least half of what calibration left.
    tune_count = min(tune_count, len(rest) if reserved else len(rest) // 2)
    tuning = balanced_sample(rest, tune_count, seed) if tune_count > 0 else []
    chosen = {s.path.resolve() for s in calibration + tuning}
    if check is None:
        gate_root, gate = folder.root, [s for s in folder.samples if s.path.resolve() not in chosen]
        unseen = {s for s in gate if s in reserved} if reserved else (set(gate) if kept.unseen else set())
    else:
        judged = held_out(check, data_record)
        gate_root, gate = check.root, [s for s in judged.samples if s.path.resolve() not in chosen]
        unseen = set(gate) if judged.unseen else set()
    note = (
        f"calibration {len(calibration)} and tuning {len(tuning)} images from {folder.root} ({kept.note}); "
        f"gate: {len(gate)} images of {gate_root} used for neither, {len(unseen)} of them unseen by training"
    )
    own = is_training_root(folder, data_record)
    never_fitted = set((data_record or {}).get("val_files") or []) if own else None  # None: not its folder at all
    unseen_chosen = frozenset(
        name for name in (s.path.relative_to(folder.root).as_posix() for s in calibration + tuning)
        if never_fitted is None or name in never_fitted
    )  # fmt: skip
    return Int8Splits(folder.root, folder.classes, calibration, tuning, gate, gate_root,
                      frozenset(s.path.relative_to(gate_root).as_posix() for s in unseen), note, unseen_chosen)  # fmt: skip


def calibration_record(taken: list[Sample], classes: list[str], root: Path, seed: int) -> CalibrationRecord:
    counter = Counter(s.label for s in taken)
    return CalibrationRecord(
        count=len(taken),
        per_class={classes[label]: counter[label] for label in sorted(counter)},
        files_sha256=files_digest(s.path.relative_to(root) for s in taken),
        source=str(root),
        seed=seed,
    )


@dataclass
class ImageSet:
    """Preprocessed images in memory: what calibration, parity, evaluation and bench consume."""

    arrays: np.ndarray  # float32 N x 3 x crop x crop, normalized by the spec
    names: list[str]  # paths relative to the data root, for reports and flips
    targets: np.ndarray  # int64 class indices
    bad: list[tuple[str, str]]  # (path, reason) of files that could not be decoded

    def __len__(self) -> int:
        return len(self.names)


def load_images(samples: list[Sample], spec, root: Path | None = None, progress: str | None = None) -> ImageSet:
    """Decode and preprocess `samples` with the one spec; bad files are listed, not fatal."""
    from dermmobile.progress import progress_bar

    arrays, names, targets, bad = [], [], [], []
    for sample in progress_bar(samples, desc=progress, unit="img"):
        name = sample.path.relative_to(root).as_posix() if root else str(sample.path)
        try:
            arrays.append(spec.load(sample.path))
        except BadImageError as exc:
            bad.append((name, exc.reason))
            continue
        names.append(name)
        targets.append(sample.label)
    crop = spec.crop
    stacked = np.stack(arrays) if arrays else np.zeros((0, 3, crop, crop), np.float32)
    return ImageSet(stacked, names, np.asarray(targets, dtype=np.int64), bad)
