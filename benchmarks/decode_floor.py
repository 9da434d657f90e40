"""Where the time from photo to tensor goes, step by step, and what no setting of the spec can remove.

    .venv/bin/python benchmarks/decode_floor.py

Issue 13's end-to-end bars leave decode + preprocess about one inference (3.3 ms for the
int8 TFLite Lite0, results/end-to-end-*). This script splits that time on the data set's
photos and on a generated 12 MP phone photo (dermmobile.bench.phone_photo), in one process,
the variants taking turns photo by photo so machine load hits them alike:

- decode from bytes already in memory (no file system) at the spec's reduction and at 1/8.
  At 1/8 libjpeg still entropy-decodes every coefficient of the file but computes only one
  value per 8 x 8 block: the floor of any JPEG decode of that file on this CPU;
- `spec.decode(path)` as every path calls it (file checks, EXIF orientation);
- the preprocessing steps: Pillow's horizontal pass, its vertical pass, the table, and all of
  `spec.array`; and the horizontal pass split over two threads (Pillow releases the GIL), to
  see whether the second core can help.

Writes `results/decode-floor-<data>-<machine>.{json,md}`.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, without importing Pillow at module load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="photos to time (an ImageFolder)")
    parser.add_argument("--images", type=int, default=54, help="data-set photos, one per class first")
    parser.add_argument("--rounds", type=int, default=11, help="passes over the photos; the median per photo is kept")
    parser.add_argument("--out", type=Path, help="result file stem (default results/decode-floor-...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from _results import machine_tag, write_result

    from dermmobile.bench.phone_photo import make_phone_photo
    from dermmobile.bench.sweep import machine_info, versions
    from dermmobile.data import balanced_sample, scan_image_folder
    from dermmobile.preprocess import DEFAULT_SPEC

    photos = [s.path for s in balanced_sample(scan_image_folder(args.data).samples, args.images)]
    with tempfile.TemporaryDirectory(prefix="decode-floor-") as tmp:
        phone = make_phone_photo(photos[0], Path(tmp) / "phone-12mp.jpg")
        sources = {"images": photos, "phone_12mp": [phone]}
        rows = [measure(name, files, DEFAULT_SPEC, args.rounds) for name, files in sources.items()]
    machine = machine_info()
    report = {"data": args.data.name, "spec": DEFAULT_SPEC.algorithm, "rows": rows, "machine": machine,
              "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    stem = args.out.name if args.out else f"decode-floor-{args.data.name}-{machine_tag()}"
    write_result(args.out.parent if args.out else HERE / "results", stem, report, markdown(report))
    print(markdown(report))
    return 0


def measure(source: str, files: list[Path], spec, rounds: int) -> dict:
    """Median over photos of each step's median over rounds, ms."""
    per_photo: dict[str, list[float]] = {}
    sizes = []
    with ThreadPoolExecutor(1) as pool:
        for path in files:
            steps, size = _steps(path, spec, pool)
            sizes.append(size)
            times: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(rounds):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step()
                    times[name].append((time.perf_counter() - start) * 1e3)
            for name, values in times.items():
                per_photo.setdefault(name, []).append(float(np.median(values)))
    return {"photos": source, "files": len(files), "decoded_size_p50": [int(v) for v in np.median(sizes, axis=0)],
            **{f"{name}_ms": float(np.median(values)) for name, values in per_photo.items()}}  # fmt: skip


def _steps(path: Path, spec, pool: ThreadPoolExecutor) -> tuple[dict, list[int]]:
    """The timed steps for one photo, and its decoded size; the split resize is checked equal to the plain one."""
    from PIL import Image

    from dermmobile.preprocess import resized_size

    data = path.read_bytes()
    rgb = spec.decode(path)
    factor = spec.decode_factor(*Image.open(io.BytesIO(data)).size)
    out_w, out_h = resized_size(*rgb.size, spec.resize)
    wide_size = (out_w, rgb.size[1])
    wide = rgb.resize(wide_size, BILINEAR)
    left = (out_w - spec.crop) // 2
    column = wide.crop((left, 0, left + spec.crop, rgb.size[1]))
    pixels = spec.pixels(rgb)
    if not np.array_equal(np.asarray(_horizontal_split(rgb, wide_size, pool)), np.asarray(wide)):
        raise RuntimeError(f"{path}: the two-thread horizontal pass differs from Pillow's one call")
    steps = {
        "decode_at_spec_factor": lambda: _decode_bytes(data, factor),
        "decode_at_1_8_floor": lambda: _decode_bytes(data, 8),
        "spec_decode_file": lambda: spec.decode(path),
        "horizontal_pass": lambda: rgb.resize(wide_size, BILINEAR),
        "horizontal_pass_2_threads": lambda: _horizontal_split(rgb, wide_size, pool),
        "vertical_pass": lambda: column.resize((spec.crop, out_h), BILINEAR),
        "table": lambda: _table(spec, pixels),
        "spec_array": lambda: spec.array(rgb),
    }
    return steps, [*rgb.size]


def _decode_bytes(data: bytes, factor: int):
    """A JPEG decoded from memory at 1/factor (libjpeg's DCT scaling through Pillow's draft)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if factor > 1:
            img.draft("RGB", (img.size[0] // factor, img.size[1] // factor))
        img.load()
        return img.copy()


def _horizontal_split(rgb, size: tuple[int, int], pool: ThreadPoolExecutor):
    """The horizontal pass with the top half of the rows on a second thread (rows are independent in it)."""
    from PIL import Image

    width, height = rgb.size
    half = height // 2
    top = pool.submit(lambda: rgb.crop((0, 0, width, half)).resize((size[0], half), BILINEAR))
    bottom = rgb.crop((0, half, width, height)).resize((size[0], height - half), BILINEAR)
    out = Image.new("RGB", (size[0], height))
    out.paste(top.result(), (0, 0))
    out.paste(bottom, (0, half))
    return out


def _table(spec, pixels: np.ndarray) -> np.ndarray:
    """Step 4 alone, as spec.array does it (one 1-D take per channel)."""
    planes = np.empty((3, *pixels.shape[:2]), np.float32)
    for channel in range(3):
        np.take(spec._channel_tables[channel], pixels[:, :, channel], out=planes[channel])
    return planes


COLUMNS = [
    ("decode_at_spec_factor_ms", "decode, spec's reduction (from memory)"),
    ("decode_at_1_8_floor_ms", "decode at 1/8: entropy-decode floor"),
    ("spec_decode_file_ms", "spec.decode(file)"),
    ("horizontal_pass_ms", "horizontal pass"),
    ("horizontal_pass_2_threads_ms", "horizontal pass, 2 threads"),
    ("vertical_pass_ms", "vertical pass (crop columns)"),
    ("table_ms", "table (step 4)"),
    ("spec_array_ms", "spec.array (steps 2-4)"),
]


def markdown(report: dict) -> str:
    from dermmobile.tables import markdown_table

    m = report["machine"]
    cells = [[row["photos"], str(row["files"]), "x".join(map(str, row["decoded_size_p50"])),
              *[f"{row[key]:.2f}" for key, _ in COLUMNS]] for row in report["rows"]]  # fmt: skip
    headers = ["photos", "files", "decoded (p50)", *[title for _, title in COLUMNS]]
    return "\n".join([
        f"# From file to tensor, step by step ({report['spec']}, {report['data']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, load {m['load_average_1_5_15min']} at the end. Median over photos of each "
        "step's median over rounds, ms, one thread unless said. The 12 MP photo is made from the first data-set photo "
        "(quality 90, sensor-like noise).",
        "",
        markdown_table(cells, headers),
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
