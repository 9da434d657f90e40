"""Image folders, safe decoding of awkward files, splits, k-fold and calibration sampling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermmobile.data import (
    balanced_sample,
    calibration_record,
    check_same_classes,
    decode_bytes,
    decode_image,
    kfold_indices,
    load_images,
    scan_image_folder,
    stratified_split,
    to_rgb,
)
from dermmobile.errors import BadImageError, BadInputError
from dermmobile.preprocess import PreprocessSpec


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _folder(root: Path, spec: dict[str, int]) -> Path:
    for name, count in spec.items():
        for i in range(count):
            _save(Image.new("RGB", (8, 8), (i * 10 % 255, 0, 0)), root / name / f"{name}{i:02d}.png")
    return root


def test_scan_skips_hidden_folders_and_files(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 3})
    _save(Image.new("RGB", (4, 4)), tmp_path / ".git" / "x.png")
    _save(Image.new("RGB", (4, 4)), tmp_path / "a" / ".ipynb_checkpoints" / "y.png")
    _save(Image.new("RGB", (4, 4)), tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    folder = scan_image_folder(tmp_path)
    assert folder.classes == ["a", "b"]
    assert len(folder.samples) == 5
    assert [p.name for p, _ in folder.skipped] == ["notes.txt"]
    assert folder.counts() == {"a": 2, "b": 3}


def test_scan_rejects_missing_and_empty(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(BadInputError, match="no class folders"):
        scan_image_folder(tmp_path)


def test_class_list_difference_is_named(tmp_path):
    _folder(tmp_path, {"acne": 1, "ulcer": 1, "wheal": 1})
    with pytest.raises(BadInputError, match="missing from .*: crust.*not in .*: ulcer"):
        scan_image_folder(tmp_path, expected_classes=["acne", "crust", "wheal"])
    with pytest.raises(BadInputError, match="different order"):
        check_same_classes(["a", "b"], ["b", "a"], "x", "y")
    check_same_classes(["a", "b"], ["a", "b"], "x", "y")


# -- decoding -------------------------------------------------------------------------


def test_decode_modes_become_rgb(tmp_path):
    gray16 = Image.fromarray(np.full((4, 5), 65535, np.uint16))
    assert gray16.mode.startswith("I;16")
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red in CMYK
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    palette.info["transparency"] = 0
    rgba = Image.new("RGBA", (3, 3), (255, 0, 0, 0))  # fully transparent red
    gray = Image.new("L", (3, 3), 77)
    cases = {
        "g16.png": (gray16, (255, 255, 255)),
        "cmyk.jpg": (cmyk, None),
        "p.png": (palette, (255, 255, 255)),
        "rgba.png": (rgba, (255, 255, 255)),
        "gray.png": (gray, (77, 77, 77)),
    }
    for name, (img, expected) in cases.items():
        rgb = decode_image(_save(img, tmp_path / name))
        assert rgb.mode == "RGB", name
        if expected:
            assert rgb.getpixel((0, 0)) == expected, name
    red = decode_image(tmp_path / "cmyk.jpg").getpixel((1, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_decode_applies_exif_rotation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = decode_image(path)
    assert upright.size == (20, 40)
    r, g, _b = upright.getpixel((10, 2))  # the stripe is now on top
    assert r > 200 and g < 60


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"this is not an image at all", "not an image"), (None, "corrupt or truncated")],
)
def test_decode_bad_files_name_the_problem(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as info:
        decode_image(path)
    assert info.value.path == path


def test_decode_refuses_decompression_bomb(tmp_path):
    path = _save(Image.new("L", (3000, 3000)), tmp_path / "bomb.png")
    with pytest.raises(BadImageError, match="pixel cap"):
        decode_image(path, max_pixels=1_000_000)


def test_extreme_shapes_preprocess(tmp_path):
    spec = PreprocessSpec(resize=36, crop=32)
    for size in [(1, 1), (20000, 20), (20, 20000)]:
        path = _save(Image.new("RGB", size, (200, 100, 50)), tmp_path / f"{size[0]}x{size[1]}.png")
        array = spec.load(path)
        assert array.shape == (3, 32, 32)
        expected = (200 / 255 - spec.mean[0]) / spec.std[0]
        assert np.allclose(array[0], expected, atol=1e-5)


# -- reduced decode and memory ---------------------------------------------------------------


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("size", "min_side", "decoded"),
    [
        ((1000, 700), 256, (500, 350)),  # 700 // 2 >= 256, 700 // 4 < 256
        ((1001, 701), 64, (126, 88)),  # 1/8: sizes round up
        ((300, 200), 256, (300, 200)),  # already small: never reduced
        ((1000, 700), None, (1000, 700)),  # no min_side (v1): full size
    ],
)
def test_jpeg_is_decoded_reduced_in_the_dct_domain(tmp_path, size, min_side, decoded):
    path = _save(_noise(*size), tmp_path / "photo.jpg", quality=90)
    assert decode_image(path, min_side=min_side).size == decoded


def test_reduced_decode_happens_before_exif_rotation_and_skips_other_formats(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1000 x 700, shown 700 x 1000
    rotated = _save(_noise(1000, 700), tmp_path / "rotated.jpg", exif=exif, quality=90)
    assert decode_image(rotated, min_side=256).size == (350, 500)
    png = _save(_noise(1000, 700), tmp_path / "photo.png")
    assert decode_image(png, min_side=256).size == (1000, 700)  # no reduced decode but JPEG's
    spec = PreprocessSpec()  # v2: spec.decode is decode_image with min_side=resize
    assert spec.decode(rotated).size == (350, 500) and spec.decode(png).size == (1000, 700)


def test_decode_refuses_what_exceeds_the_memory_budget(tmp_path):
    path = _save(Image.new("RGBA", (500, 400)), tmp_path / "big.png")
    with Image.open(path) as img:
        needed = decode_bytes(img)
    assert needed >= 500 * 400 * 4 * 2  # the RGBA image and the RGB image made from it
    with pytest.raises(BadImageError, match="memory budget") as info:
        decode_image(path, max_bytes=needed - 1)
    assert "MiB" in info.value.reason and info.value.path == path
    assert decode_image(path, max_bytes=needed).size == (500, 400)
    jpeg = _save(Image.new("RGB", (4000, 3000)), tmp_path / "big.jpg")
    with pytest.raises(BadImageError, match="memory budget"):
        decode_image(jpeg, max_bytes=20 * 2**20)  # 12 MP at full size needs 96 MB
    assert decode_image(jpeg, min_side=256, max_bytes=20 * 2**20).size == (500, 375)  # at 1/8 it fits


def _modes() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (37, 23, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 4, (37, 23), dtype=np.uint8), mode="L").convert("P")
    palette.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    palette.info["transparency"] = bytes([0, 128, 255, 40])
    small_ints = Image.fromarray(rng.integers(0, 256, (37, 23), dtype=np.int32), mode="I")
    return {
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba[..., :2].copy(), "LA"),
        "P": palette,
        "I;16": Image.fromarray(rng.integers(0, 65536, (37, 23), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(-70000, 70000, (37, 23), dtype=np.int32), mode="I"),
        "I small": small_ints,
        "F": Image.fromarray(rng.normal(100, 120, (37, 23)).astype(np.float32), mode="F"),
        "CMYK": Image.fromarray(rgba, "RGBA").convert("CMYK"),
        "L": Image.fromarray(rgba[..., 0].copy(), "L"),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_rgb_conversion_in_strips_equals_one_pass(monkeypatch, mode):
    """to_rgb converts strip by strip to save memory: every conversion is per pixel, so the
    strips must give what one whole-image pass gives (strips of 1 and 5 rows vs one strip)."""
    image = _modes()[mode]
    whole = np.asarray(to_rgb(image.copy()))
    for strip_pixels in (1, 5 * image.width):
        monkeypatch.setattr("dermmobile.data.STRIP_PIXELS", strip_pixels)
        np.testing.assert_array_equal(np.asarray(to_rgb(image.copy())), whole)


def test_rgb_image_is_not_copied():
    image = _noise(8, 6)
    assert to_rgb(image) is image  # already upright RGB: no full-size copy


RSS_SCRIPT = """
import sys
from pathlib import Path
def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
from dermmobile.preprocess import PreprocessSpec
spec = PreprocessSpec()
spec.array(spec.decode(Path(sys.argv[2])))  # warm up: imports and lazy tables
before = peak()
tensor = spec.load(Path(sys.argv[1]))
print(before, peak(), tensor.shape)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_classifying_a_large_png_stays_within_its_decode_budget(tmp_path, mode):
    """Issue 15: a PNG just under the pixel cap took 1.4 GB of RSS (float64 copies of the whole
    image). Now the decoded image and one RGB copy are all: measured in a fresh process."""
    import subprocess
    import sys

    width, height = 4000, 2500  # 10 MP: big enough to see, quick to write
    gradient = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    pixels = np.broadcast_to(gradient[None, :, None], (height, width, len(mode))).copy()
    path = _save(Image.fromarray(pixels, mode), tmp_path / "large.png", compress_level=1)
    small = _save(Image.new(mode, (300, 300)), tmp_path / "small.png")
    with Image.open(path) as img:
        budget = decode_bytes(img)
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(small)], capture_output=True, text=True, check=True)
    before, after, _ = done.stdout.split(maxsplit=2)
    growth = int(after) - int(before)
    assert growth <= budget + 16 * 2**20, f"peak RSS grew {growth / 2**20:.0f} MiB; decode budget {budget / 2**20:.0f} MiB"
    assert growth <= (2.3 if mode == "RGBA" else 1.3) * width * height * 4  # v1 took 9 full-size float64 bytes per pixel


def test_load_images_skips_bad_files_and_keeps_labels(tmp_path):
    _folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    folder = scan_image_folder(tmp_path)
    images = load_images(folder.samples, PreprocessSpec(resize=8, crop=8), folder.root)
    assert len(images) == 4 and [b[0] for b in images.bad] == ["a/broken.jpg"]
    assert images.targets.tolist() == [0, 0, 1, 1]
    assert images.names == ["a/a00.png", "a/a01.png", "b/b00.png", "b/b01.png"]


# -- splits ---------------------------------------------------------------------------


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    folder = scan_image_folder(_folder(tmp_path, {"a": 20, "b": 30}))
    split = stratified_split(folder.samples, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert split == stratified_split(folder.samples, val_fraction=0.1, test_fraction=0.2, seed=3)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == 50 and len(set().union(*parts)) == 50
    labels = [[folder.samples[i].label for i in p] for p in (split.test, split.val)]
    assert labels[0].count(0) == 4 and labels[0].count(1) == 6
    assert labels[1].count(0) == 2 and labels[1].count(1) == 2
    assert stratified_split(folder.samples, seed=4).test != split.test


def test_split_of_a_class_does_not_move_when_other_classes_grow(tmp_path):
    folder = scan_image_folder(_folder(tmp_path, {"a": 20, "b": 10}))
    before = stratified_split(folder.samples)
    a_test = {folder.samples[i].path for i in before.test if folder.samples[i].label == 0}
    _folder(tmp_path, {"b": 25})
    grown = scan_image_folder(tmp_path)
    after = stratified_split(grown.samples)
    assert {grown.samples[i].path for i in after.test if grown.samples[i].label == 0} == a_test


def test_kfold_covers_each_image_once_per_class_balanced(tmp_path):
    folder = scan_image_folder(_folder(tmp_path, {"a": 10, "b": 7}))
    folds = kfold_indices(folder.samples, 5, seed=1)
    val_all = sorted(i for _, val in folds for i in val)
    assert val_all == list(range(17))
    for train, val in folds:
        assert not set(train) & set(val)
        assert [folder.samples[i].label for i in val].count(0) == 2
    with pytest.raises(BadInputError, match="at least 8 images per class"):
        kfold_indices(folder.samples, 8)


def test_balanced_calibration_sample_records_what_it_took(tmp_path):
    folder = scan_image_folder(_folder(tmp_path, {"a": 10, "b": 10, "c": 2}))
    taken = balanced_sample(folder.samples, 9, seed=0)
    record = calibration_record(taken, folder.classes, folder.root, 0)
    assert record.count == 9 and record.per_class == {"a": 4, "b": 3, "c": 2}
    assert (
        record.files_sha256
        == calibration_record(balanced_sample(folder.samples, 9, 0), folder.classes, folder.root, 0).files_sha256
    )
    other = calibration_record(balanced_sample(folder.samples, 9, 1), folder.classes, folder.root, 1)
    assert other.files_sha256 != record.files_sha256


# -- held-out images: the one rule export, evaluate and bench share ----------------------------
def _record(folder, test_files, root=None):
    from dermmobile.data import files_digest

    names = [s.path.relative_to(folder.root) for s in folder.samples]
    return {"root": str(root or folder.root), "files_sha256": files_digest(names), "test_files": test_files}


def test_held_out_takes_the_recorded_test_files_of_the_training_folder(tmp_path):
    from dermmobile.data import held_out

    folder = scan_image_folder(_folder(tmp_path / "data", {"a": 3, "b": 3}))
    record = _record(folder, ["b/b01.png", "a/a02.png"])
    chosen = held_out(folder, record)
    assert [s.path.name for s in chosen.samples] == ["a02.png", "b01.png"]  # folder order, whatever the record's
    assert (chosen.split, chosen.unseen) == ("test", True)
    assert held_out(folder, record, "test").samples == chosen.samples
    every = held_out(folder, record, "all")
    assert len(every.samples) == 6 and (every.split, every.unseen) == ("all", False)  # training images among them


def test_held_out_recognises_a_moved_training_folder_by_its_file_list(tmp_path):
    from dermmobile.data import held_out

    folder = scan_image_folder(_folder(tmp_path / "moved", {"a": 3, "b": 3}))
    record = _record(folder, ["a/a00.png"], root=tmp_path / "where-it-was-trained")
    assert [s.path.name for s in held_out(folder, record).samples] == ["a00.png"]
    record["files_sha256"] = "0" * 64  # another file list at another path: another folder
    other = held_out(folder, record)
    assert len(other.samples) == 6 and other.unseen and "not the checkpoint's training folder" in other.note


def test_held_out_of_another_folder_is_every_image_and_test_is_refused(tmp_path):
    from dermmobile.data import held_out

    folder = scan_image_folder(_folder(tmp_path / "other", {"a": 2, "b": 2}))
    record = {"root": str(tmp_path / "train"), "files_sha256": "f" * 64, "test_files": ["a/a00.png"]}
    chosen = held_out(folder, record)
    assert len(chosen.samples) == 4 and chosen.split == "all" and chosen.unseen
    with pytest.raises(BadInputError, match="is not the folder the checkpoint was trained on"):
        held_out(folder, record, "test")
    assert held_out(folder, None).unseen  # no record at all: nothing was seen


def test_held_out_without_a_recorded_split_says_training_images_are_included(tmp_path):
    from dermmobile.data import held_out

    folder = scan_image_folder(_folder(tmp_path / "data", {"a": 2, "b": 2}))
    chosen = held_out(folder, {"root": str(folder.root)})
    assert len(chosen.samples) == 4 and not chosen.unseen and "some seen in training" in chosen.note
    with pytest.raises(BadInputError, match="records no held-out test files"):
        held_out(folder, {"root": str(folder.root)}, "test")


def test_held_out_refuses_recorded_files_that_went_missing(tmp_path):
    from dermmobile.data import held_out

    folder = scan_image_folder(_folder(tmp_path / "data", {"a": 3, "b": 3}))
    record = _record(folder, ["a/a00.png", "b/b02.png"])
    (folder.root / "b" / "b02.png").unlink()
    shrunk = scan_image_folder(folder.root)
    with pytest.raises(BadInputError, match=r"1 of the 2 held-out test files .* missing .*\(first: b/b02.png\)"):
        held_out(shrunk, record)
    assert len(held_out(shrunk, record, "all").samples) == 5  # --split all still works
    with pytest.raises(BadInputError, match="unknown split 'train'"):
        held_out(shrunk, record, "train")


def test_int8_splits_name_the_chosen_images_training_never_fitted(tmp_path):
    """Calibration and tuning images that are the checkpoint's validation files are unseen by training (the forecast
    weighs them as the gate's unseen share); in a folder the checkpoint was not trained on, every image is."""
    from dermmobile.data import int8_splits

    folder = scan_image_folder(_folder(tmp_path / "data", {"a": 8, "b": 8}))
    record = _record(folder, ["a/a00.png", "b/b00.png"]) | {"val_files": ["a/a01.png", "b/b05.png", "b/b00.png"]}
    splits = int8_splits(folder, record, calib_count=4, tune_count=4)
    chosen = {s.path.relative_to(folder.root).as_posix() for s in splits.calibration + splits.tuning}
    assert splits.unseen_chosen == chosen & {"a/a01.png", "b/b05.png"}  # b/b00.png is a test file: in the gate
    assert splits.unseen_chosen  # (with this seed at least one validation file is chosen)
    assert all(s.path.relative_to(folder.root).as_posix() not in splits.unseen_chosen for s in splits.gate)
    elsewhere = int8_splits(folder, record | {"files_sha256": "0" * 64, "root": str(tmp_path / "other")}, 4, 4)
    assert elsewhere.unseen_chosen == {s.path.relative_to(folder.root).as_posix()
                                       for s in elsewhere.calibration + elsewhere.tuning}  # fmt: skip
    assert int8_splits(folder, {k: v for k, v in record.items() if k != "val_files"}, 4, 4).unseen_chosen == set()
