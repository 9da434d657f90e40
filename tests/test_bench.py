"""The bench: metrics against hand-computed values, the error-row path, phone-row merging, reports,
and a run with torch made unimportable (onnxruntime only, as on a Raspberry Pi)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermmobile.artifact import Manifest, TensorSpec, load_artifact, write_manifest
from dermmobile.bench import latency
from dermmobile.bench import report as report_module
from dermmobile.bench.accuracy import accuracy_parity
from dermmobile.bench.merge import check_row, merge_rows, read_rows
from dermmobile.bench.phone_photo import make_phone_photo
from dermmobile.bench.results import read_job_result, write_job_result
from dermmobile.bench.sweep import select_samples
from dermmobile.bench.worker import Job, run_job
from dermmobile.cli import main
from dermmobile.errors import EXIT_BAD_INPUT, BadInputError, MissingBackendError
from dermmobile.preprocess import PreprocessSpec
from dermmobile.synthetic import make_synthetic_dataset
from dermmobile.tables import markdown_table

LABELS = ["acne", "crust", "wheal"]
SPEC = PreprocessSpec(resize=8, crop=8)


# -- latency statistics ------------------------------------------------------------------
def test_percentiles_mean_std_by_hand():
    stats = latency.summarize([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])  # order must not matter
    # numpy linear interpolation: position p/100 * (n-1) between sorted values 1..10
    assert stats.p50 == pytest.approx(5.5)
    assert stats.p90 == pytest.approx(9.1)
    assert stats.p99 == pytest.approx(9.91)
    assert stats.mean == pytest.approx(5.5)
    assert stats.std == pytest.approx((sum((v - 5.5) ** 2 for v in range(1, 11)) / 10) ** 0.5)  # ddof=0, as on Android
    assert (stats.min, stats.max, stats.n) == (1, 10, 10)
    assert latency.summarize([4.0]).std == 0.0
    with pytest.raises(ValueError):
        latency.summarize([])


def test_gflops_arithmetic():
    assert latency.gflops_per_second(2e9, 10.0) == pytest.approx(200.0)  # 2 GFLOP in 10 ms
    assert latency.gflops_per_second(None, 10.0) is None
    assert latency.gflops_per_second(1e9, None) is None


def test_gemm_peak_is_the_fastest_library_and_names_it(monkeypatch):
    # numpy and torch take turns: warm-up calls are untimed, then 3 repeats of (numpy, torch) in that order
    times = iter([4.0, 1.0, 3.0, 2.0, 5.0, 1.5])  # numpy best 3 ms, torch best 1 ms
    monkeypatch.setattr(latency, "time_calls", lambda fn, n: [next(times)])
    peak = latency.gemm_peak(size=64, threads=1, repeats=3)
    numpy_name, torch_name = peak.candidates
    assert numpy_name.startswith("numpy ") and torch_name.startswith("torch ")
    assert peak.candidates[numpy_name] == pytest.approx(2 * 64**3 / 3e-3 / 1e9)
    assert peak.library == torch_name and peak.gflops == pytest.approx(2 * 64**3 / 1e-3 / 1e9)


def test_gemm_peak_without_torch_is_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    peak = latency.gemm_peak(size=64, threads=1, repeats=2)
    assert list(peak.candidates) == [peak.library] and peak.library.startswith("numpy ") and peak.gflops > 0


# -- parity on a labeled set ---------------------------------------------------------------
def test_accuracy_agreement_flips_logit_errors_and_drift_by_hand():
    ref = np.array([[3.0, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0]])
    cand = np.array([[3.0, 0, 0], [0, 2, 0], [0, 1, 0.5], [1, 0, 0]])  # image 2 flips c2 -> c1
    targets = np.array([0, 1, 2, 1])
    result = accuracy_parity(ref, cand, targets, LABELS, ["i0", "i1", "i2", "i3"], "int8", "art.tflite")
    p = result.parity
    assert p.agreement == pytest.approx(0.75)
    assert [(f.image, f.reference, f.artifact) for f in p.flips] == [("i2", "wheal", "crust")]
    assert p.max_abs_logit == pytest.approx(1.0)
    assert p.mean_abs_logit == pytest.approx(1.5 / 12)
    assert p.min_cosine == pytest.approx(0.5 / np.sqrt(1.25))
    assert p.reference_accuracy == pytest.approx(0.75) and p.accuracy == pytest.approx(0.5)
    assert result.accuracy_drop_points == pytest.approx(25.0)
    assert result.reference_confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert result.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]
    assert result.drift.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, -1]]
    assert result.drift_l1 == 2
    assert result.per_class.tolist() == [1.0, 0.5, 0.0]
    # int8 gate: 98 % agreement and at most 1 point top-1 lost; both broken, each named
    assert len(p.failures) == 2 and all("art.tflite" in f for f in p.failures)
    assert "agreement 75.00%" in p.failures[0] and "25.00 points" in p.failures[1]
    out = result.to_dict(LABELS)
    assert out["per_class_top1"] == {"acne": 1.0, "crust": 0.5, "wheal": 0.0}
    assert out["confusion_drift_l1"] == 2 and out["passed"] is False


def test_nan_outputs_count_as_wrong_and_as_drift():
    ref = np.eye(3)
    cand = np.eye(3)
    cand[1, 0] = np.nan
    result = accuracy_parity(ref, cand, np.array([0, 1, 2]), LABELS, None, "none", "a.onnx")
    assert result.parity.nonfinite == 1
    assert result.per_class.tolist() == [1.0, 0.0, 1.0]  # the NaN image is not silently dropped
    assert result.confusion[1].sum() == 0 and result.drift_l1 == 2
    assert not result.parity.passed


def test_identical_fp32_outputs_pass():
    ref = np.random.default_rng(0).normal(size=(5, 3))
    result = accuracy_parity(ref, ref + 1e-5, np.array([0, 1, 2, 0, 1]), LABELS, None, "none", "a.onnx")
    assert result.parity.passed and result.drift_l1 == 0


# -- fakes: artifacts whose runtimes we control -----------------------------------------------------
class MeanRuntime:
    """Logits = per-channel mean of the image (3 channels -> 3 classes), plus an offset."""

    name = "fake"

    def __init__(self, offset: float = 0.0, fail: bool = False):
        self.offset, self.fail, self.calls = offset, fail, 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        return batch.mean(axis=(2, 3)).astype(np.float32) + self.offset


class FakeTarget:
    def __init__(self, make):
        self.make = make

    def load(self, path, manifest, threads=None):
        return self.make()


def _mac():
    raise MissingBackendError("Core ML prediction needs macOS")


FAKES = {
    "fake": FakeTarget(MeanRuntime),
    "fakenoisy": FakeTarget(lambda: MeanRuntime(offset=0.01)),  # above the 1e-3 fp32 logit gate
    "fakebad": FakeTarget(lambda: MeanRuntime(fail=True)),
    "fakemac": FakeTarget(_mac),
}


@pytest.fixture(autouse=True)
def fake_formats(monkeypatch):
    """Manifests name registered formats only: register the fakes (their targets come from the patched get_target)."""
    from dermmobile.targets import _MODULES

    for name in FAKES:
        monkeypatch.setitem(_MODULES, name, __name__)


def write_artifact(folder: Path, name: str, fmt: str, quantization: str = "none", payload: bytes | None = None) -> Path:
    path = folder / name
    path.write_bytes(payload if payload is not None else f"fake artifact {name}".encode())
    manifest = Manifest(
        format=fmt,
        quantization=quantization,
        file=name,
        arch="fake",
        labels=list(LABELS),
        input=TensorSpec("image", [1, 3, 8, 8], "float32", "NCHW"),
        output=TensorSpec("logits", [1, 3], "float32"),
        preprocess=SPEC.to_dict(),
    )
    return write_manifest(path, manifest)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), per_class=2, size=16, classes=LABELS)


def test_worker_protocol_order_and_counts(tmp_path, monkeypatch, data):
    runtime = MeanRuntime()
    monkeypatch.setattr("dermmobile.targets.get_target", lambda name: FakeTarget(lambda: runtime))
    manifest = write_artifact(tmp_path, "a.bin", "fake")
    images = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    files = sorted(str(p) for p in data.rglob("*.png"))[:2]
    job = Job(
        "artifact",
        1,
        path=str(manifest),
        warmup=3,
        iters=5,
        images=str(tmp_path / "x.npy"),
        parity=True,
        e2e_files=files,
        spec=SPEC.to_dict(),
    )
    job.phone_photo = str(make_phone_photo(Path(files[0]), tmp_path / "phone.jpg", size=(640, 480)))
    job.phone_runs = 3
    result = run_job(job)
    assert result.status == "ok", result.error
    # the load check (dermmobile.runtime.smoke_test) + first inference + warm-up + timed
    # + end-to-end (data set, then phone photo) + one call per parity image
    assert runtime.calls == 1 + 1 + 3 + 5 + 2 + 3 + 4
    assert result.latency.n == 5 and result.end_to_end["images"].total.n == 2
    e2e = result.end_to_end_dict()
    on_images, phone = e2e["images"], e2e["phone_12mp"]
    assert (on_images["files"], phone["files"]) == (2, 3)
    for e2e in (on_images, phone):  # the parts add up to the whole, file by file
        parts = sum(e2e[f"{step}_ms"]["mean"] for step in ("decode", "preprocess", "inference"))
        assert parts == pytest.approx(e2e["total_ms"]["mean"], rel=1e-9)
        assert e2e["total_over_inference_p50"] == pytest.approx(e2e["total_ms"]["p50"] / result.latency.p50)
    assert result.logits.dtype == np.float32 and np.allclose(result.logits, images.mean(axis=(2, 3)))
    assert result.peak_rss_mb > 0
    # a worker process hands it back as JSON + .npy; read back, it is the same result with the logits loaded
    write_job_result(result, tmp_path / "result.json")
    back = read_job_result(tmp_path / "result.json")
    assert back.to_json() == json.loads(json.dumps(result.to_json()))
    assert (
        np.array_equal(back.logits, result.logits)
        and back.end_to_end["phone_12mp"].decode == result.end_to_end["phone_12mp"].decode
    )


def test_job_errors_come_back_typed_with_their_stage(tmp_path, monkeypatch):
    monkeypatch.setattr("dermmobile.targets.get_target", lambda name: FAKES[name])
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    bad = run_job(Job("artifact", 1, path=str(write_artifact(tmp_path, "b.bin", "fakebad")), images=str(tmp_path / "x.npy")))
    # A runtime that cannot run one image is refused at load (dermmobile.runtime.smoke_test): bad input, exit 2.
    assert bad.status == "error" and bad.error.startswith("load: ") and "RuntimeError: boom" in bad.error
    assert bad.bad_input and bad.logits is None and bad.latency is None
    # Any other failure keeps its stage, its type and a traceback, and is not bad input.
    lost = run_job(Job("artifact", 1, path=str(tmp_path / "b.bin.json"), images=str(tmp_path / "missing.npy")))
    assert lost.status == "error" and lost.error.startswith("setup: FileNotFoundError") and not lost.bad_input
    assert "Traceback" in lost.traceback
    mac = run_job(Job("artifact", 1, path=str(write_artifact(tmp_path, "c.bin", "fakemac")), images=str(tmp_path / "x.npy")))
    assert mac.status == "not-run" and mac.error.startswith("not run:")


def test_sweep_records_error_rows_goes_on_and_fails_the_exit_code(tmp_path, monkeypatch, data):
    monkeypatch.setattr("dermmobile.targets.get_target", lambda name: FAKES[name])
    export = tmp_path / "export"
    export.mkdir()
    write_artifact(export, "a-ref.bin", "fake")
    write_artifact(export, "b-bad.bin", "fakebad")
    write_artifact(export, "c-mac.mlpackage", "fakemac")
    write_artifact(export, "d-noisy.bin", "fakenoisy")
    write_artifact(export, "e-same.bin", "fake", "fp16")
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--artifacts",
            str(export),
            "--data",
            str(data),
            "--in-process",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "2",
            "--e2e-images",
            "2",
            "--gemm-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert code == EXIT_BAD_INPUT  # an artifact that does not run is refused as damaged, as in inspect and predict
    report = json.loads((out / "bench.json").read_text())
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert by_name["a-ref.bin"]["status"] == "reference"
    assert by_name["b-bad.bin"]["status"] == "error"
    assert (
        "load: " in by_name["b-bad.bin"]["error"]
        and "damaged or not supported by this runtime: RuntimeError: boom" in by_name["b-bad.bin"]["error"]
    )
    assert report["refused"] == ["b-bad.bin"]
    assert by_name["c-mac.mlpackage"]["status"] == "not-run"
    assert by_name["c-mac.mlpackage"]["error"].startswith("not run:") and "macOS" in by_name["c-mac.mlpackage"]["error"]
    assert by_name["d-noisy.bin"]["status"] == "failed"
    assert by_name["d-noisy.bin"]["parity"]["max_abs_logit"] == pytest.approx(0.01, rel=1e-3)
    assert by_name["e-same.bin"]["status"] == "passed"  # measured after the failing ones: the sweep went on
    assert len(report["rows"]) == 5 * 2
    good = [r for r in report["rows"] if r["artifact"] == "e-same.bin"]
    assert {r["threads"] for r in good} == {1, 2} and all(r["latency_ms"]["n"] == 3 for r in good)
    assert report["data"]["images"] == 6 and report["data"]["split"] == "all"
    assert any(p.startswith("b-bad.bin: not checked: load") for p in report["problems"])
    problems = "\n".join(report["problems"])
    assert "b-bad.bin @ 2 threads" in problems and "d-noisy.bin: max abs logit error" in problems
    assert "c-mac" not in problems and "e-same" not in problems
    md = (out / "bench.md").read_text()
    assert ["b-bad.bin", "fakebad", "none"] in [cells[:3] for cells in md_rows(md)]
    assert "not run:" in md and "d-noisy.bin: max abs logit error" in md
    peak = report["gemm_peak_gflops"]["1"]
    library = report["gemm_peak_library"]["1"]
    assert peak == max(report["gemm_candidates_gflops"]["1"].values()) == report["gemm_candidates_gflops"]["1"][library]
    assert library.split()[0] in ("numpy", "torch") and f"by {library}" in md
    assert (out / "accuracy-latency.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "confusions").iterdir()) == ["d-noisy.bin.png", "e-same.bin.png"]


def test_all_passing_sweep_exits_zero(tmp_path, monkeypatch, data):
    monkeypatch.setattr("dermmobile.targets.get_target", lambda name: FAKES[name])
    export = tmp_path / "export"
    export.mkdir()
    write_artifact(export, "a.bin", "fake")
    write_artifact(export, "b.bin", "fake", "int8")
    code = main(
        [
            "bench",
            "--artifacts",
            str(export),
            "--data",
            str(data),
            "--in-process",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--e2e-images",
            "1",
            "--phone-runs",
            "2",
            "--gemm-size",
            "32",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["data"]["phone_photo"]["size"] == [4032, 3024] and report["data"]["phone_photo"]["runs"] == 2
    for row in report["rows"]:  # decode, preprocess and inference apart, on the data set's photos and the 12 MP JPEG
        e2e = row["end_to_end"]
        assert (e2e["images"]["files"], e2e["phone_12mp"]["files"]) == (1, 2)
        assert set(e2e["phone_12mp"]) >= {"decode_ms", "preprocess_ms", "inference_ms", "total_ms", "total_over_inference_p50"}
    assert "12 MP phone JPEG" in (tmp_path / "out" / "bench.md").read_text()


def md_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row in a text (escaped pipes stay inside their cell)."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in markdown.splitlines() if line.startswith("| ")
    ]


# -- report rendering ----------------------------------------------------------------------------------
HOSTILE = "$\\undefinedcmd{$ |\x1b[31m"  # mathtext that does not parse, a pipe, an escape sequence


def small_report(names: list[tuple[str, str, str, float, float]]) -> dict:
    """A report with one artifact per (name, format, quantization, top-1, p50) and one host row each."""
    artifacts, rows = [], []
    for name, fmt, quant, top1, p50 in names:
        kind = {"format": fmt, "quantization": quant, "error": None}
        artifacts.append({"name": name, "role": "artifact", "status": "passed", "bytes": 1000, **kind,
                          "parity": {"accuracy": top1, "flips": []}})  # fmt: skip
        latency_ms = {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0}
        rows.append({"source": "host", "device": "cpu", "artifact": name, "threads": 2, "status": "ok", **kind,
                     "latency_ms": latency_ms})  # fmt: skip
    return {
        "machine": {"cpu": HOSTILE, "cores": 2, "os": "linux", "python": "3.11"},
        "versions": {"dermmobile": "0"},
        "data": {"root": "/d", "split": "all", "images": 4, "classes": [HOSTILE, "b"]},
        "reference": {"name": names[0][0], "note": "n"},
        "settings": {"threads": [2], "warmup": 1, "iters": 2},
        "gemm_peak_gflops": {"2": 199.0},
        "gemm_peak_library": {"2": "torch 2.14.1 (mkl)"},
        "gemm_candidates_gflops": {"2": {"numpy 2.4.6 (openblas 0.3.31, Haswell)": 110.0, "torch 2.14.1 (mkl)": 199.0}},
        "created": "now",
        "artifacts": artifacts,
        "rows": rows,
    }


def test_markdown_tables_escape_pipes_and_name_the_gemm_library():
    report = small_report([(f"a|{HOSTILE}", "onnx", "none", 0.5, 3.0), ("b.tflite", "tflite", "int8", 0.4, 2.0)])
    md = report_module.markdown(report)
    rows = md_rows(md)
    escaped = "a\\|" + HOSTILE.replace("|", "\\|")
    assert [escaped, "onnx", "none"] in [r[:3] for r in rows]  # one cell: the pipes in the name did not split the row
    assert [len(r) for r in rows if r[0] == escaped] == [14, 15]  # its parity row and its latency row, all columns
    assert "199.0 GFLOP/s at 2 thread(s) by torch 2.14.1 (mkl) (numpy 2.4.6 (openblas 0.3.31, Haswell) 110.0)" in md
    assert markdown_table([["1.50", None]], ["x", "y"]).splitlines()[-1] == "| 1.50 |     |"  # kept as formatted


def test_pareto_front_by_hand():
    points = [(10.0, 60.0), (5.0, 55.0), (20.0, 70.0), (12.0, 59.0), (5.0, 50.0), (30.0, 70.0)]
    # (5, 55) fastest; (10, 60) better than everything slower except (20, 70); (12, 59), (5, 50), (30, 70) are beaten
    assert report_module.pareto_front(points) == [1, 0, 2]


def test_plot_survives_hostile_labels_and_gives_each_format_one_colour(tmp_path):
    names = [(f"{HOSTILE}{i}", fmt, quant, 0.5 + i / 100, 2.0 + i)
             for i, (fmt, quant) in enumerate([("onnx", "none"), ("onnx", "int8"), ("tflite", "none"), ("tflite", "int8"),
                                               ("$\\frac{", "fp16"), ("executorch", "int8")])]  # fmt: skip
    report = small_report(names)
    fig = report_module.accuracy_latency_figure(report)
    ax = fig.axes[0]
    colour_of, marker_paths = {}, {}
    for collection in ax.collections:
        faces = collection.get_facecolors()
        if not len(faces):  # the Pareto rings are hollow
            continue
        x, _ = collection.get_offsets()[0]
        _, fmt, quant, _, _ = next(n for n in names if n[4] == pytest.approx(x))
        colour_of.setdefault(fmt, set()).add(tuple(faces[0]))
        marker_paths.setdefault(quant, set()).add(collection.get_paths()[0].vertices.tobytes())
    assert all(len(colours) == 1 for colours in colour_of.values()) and len(colour_of) == 4
    assert len({next(iter(c)) for c in colour_of.values()}) == 4  # four formats, four colours
    assert all(len(paths) == 1 for paths in marker_paths.values())
    assert len({next(iter(p)) for p in marker_paths.values()}) == 3  # none, int8, fp16: three markers
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, len(names) + 1))
    fig.canvas.draw()  # layout and rendering of every text: mathtext would raise here
    boxes = [t.get_window_extent() for t in numbers]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    report_module.pyplot().close(fig)
    written = report_module.write_reports(report, tmp_path / "out")
    assert (tmp_path / "out" / "accuracy-latency.png").stat().st_size > 10_000 and len(written) >= 3


# -- data selection ---------------------------------------------------------------------------
def test_held_out_split_and_class_mismatch(data):
    record = {"root": str(data), "test_files": ["acne/acne_000.png", "wheal/wheal_001.png"]}
    _, samples, info = select_samples(data, LABELS, record, "test")
    assert [s.path.name for s in samples] == ["acne_000.png", "wheal_001.png"] and info["split"] == "test"
    _, samples, info = select_samples(data, LABELS, record, "all")
    assert len(samples) == 6 and info["split"] == "all"
    _, samples, _ = select_samples(data, LABELS, {"root": "/elsewhere", "test_files": ["acne/acne_000.png"]}, "test")
    assert len(samples) == 6  # another folder: every image is unseen
    with pytest.raises(BadInputError, match="class lists differ"):
        select_samples(data, ["acne", "crust", "ulcer"], None, "test")


# -- phone rows ---------------------------------------------------------------------------------
PHONE_ROW = {
    "source": "android",
    "device": "Pixel 7",
    "artifact": "b.bin",
    "format": "tflite",
    "quantization": "int8",
    "threads": 4,
    "latency_ms": {"p50": 4.1, "p90": 4.6, "p99": 6.0, "mean": 4.3, "std": 0.4},
    "iterations": 200,
}


def test_phone_rows_are_checked_and_merged(tmp_path):
    assert check_row(dict(PHONE_ROW), "r")["status"] == "ok"
    for key, bad in [("threads", 0), ("iterations", "200"), ("device", ""), ("latency_ms", {"p50": 1})]:
        with pytest.raises(BadInputError, match=key.split("_")[0]):
            check_row({**PHONE_ROW, key: bad}, "r")
    with pytest.raises(BadInputError, match="p50 <= p90"):
        check_row({**PHONE_ROW, "latency_ms": {**PHONE_ROW["latency_ms"], "p90": 1.0}}, "r")
    file = tmp_path / "phone.json"
    file.write_text(json.dumps({"schema": "dermmobile-bench-rows", "schema_version": 1, "rows": [PHONE_ROW]}))
    rows = read_rows(file)
    report = {"rows": [{**PHONE_ROW, "latency_ms": {"p50": 9}}, {**PHONE_ROW, "threads": 1}]}
    merge_rows(report, rows)
    assert len(report["rows"]) == 2  # same source/device/artifact/threads replaced, the 1-thread row kept
    assert report["rows"][-1]["latency_ms"]["p50"] == 4.1 and report["rows"][-1]["merged_from"] == "phone.json"


def test_host_rows_are_built_against_the_one_row_schema(tmp_path):
    """rows.host_row validates what it builds with BenchRow: the row --merge accepts, or an error at the source."""
    from pydantic import ValidationError

    from dermmobile.bench.results import JobResult
    from dermmobile.bench.rows import host_row
    from dermmobile.bench.sweep import Subject

    result = JobResult(2, latency=latency.summarize([1.0, 2.0, 3.0]), iterations=3, warmup=1, runtime="tflite")
    subject = Subject("m.tflite", "artifact", tmp_path / "m.tflite.json", "tflite", "int8", list(LABELS), {}, file_bytes=10)
    row = host_row(subject, result, "Some CPU", flops=None, gemm=None)
    assert row["error"] is None and row["gflops_per_s"] is None  # keys given as None are kept, as before
    assert check_row(json.loads(json.dumps(row)), "host row") == row
    failed = host_row(
        Subject("x", "artifact", tmp_path / "x.json", "unknown", "none", [], {}), JobResult.failed(1, "refused"), "c", None, None
    )
    assert failed["status"] == "error" and failed["latency_ms"] is None
    with pytest.raises(ValidationError, match="quantization"):
        host_row(Subject("m", "artifact", tmp_path / "m.json", "tflite", "int4", [], {}), result, "c", None, None)


def test_merge_only_rerenders_an_existing_report(tmp_path, monkeypatch, data):
    monkeypatch.setattr("dermmobile.targets.get_target", lambda name: FAKES[name])
    export = tmp_path / "export"
    export.mkdir()
    write_artifact(export, "b.bin", "fake")
    out = tmp_path / "out"
    args = ["--data", str(data), "--in-process", "--iters", "2", "--warmup", "0", "--threads", "1", "--gemm-size", "32"]
    assert main(["bench", "--artifacts", str(export), *args, "--out", str(out)]) == 0
    phone = tmp_path / "phone.json"
    phone.write_text(json.dumps([PHONE_ROW]))
    assert main(["bench", "--merge", str(phone), "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert [r["source"] for r in report["rows"]] == ["host", "android"]
    assert ["b.bin", "android", "Pixel 7", "4"] in [cells[:4] for cells in md_rows((out / "bench.md").read_text())]
    phone.write_text(json.dumps([{**PHONE_ROW, "threads": -1}]))
    assert main(["bench", "--merge", str(phone), "--out", str(out)]) == 2


# -- without torch ------------------------------------------------------------------------------
BLOCKER = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def tiny_onnx(path: Path) -> bytes:
    """Global average pool -> 3x3 linear layer, built with onnx.helper (no torch needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1, 0.5, 0], [0, 1, 0.5], [0.5, 0, 1]], np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_bench_runs_without_torch_on_onnx(tmp_path, data):
    pytest.importorskip("onnxruntime")
    export = tmp_path / "export"
    export.mkdir()
    payload = tiny_onnx(tmp_path / "m.onnx")
    write_artifact(export, "tiny-onnx-none.onnx", "onnx", "none", payload)
    write_artifact(export, "tiny-onnx-int8.onnx", "onnx", "int8", payload)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker really blocks
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "dermmobile",
        "bench",
        "--artifacts",
        str(export),
        "--data",
        str(data),
        "--iters",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--e2e-images",
        "2",
        "--gemm-size",
        "64",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    statuses = {a["name"]: a["status"] for a in report["artifacts"]}
    assert statuses == {"tiny-onnx-int8.onnx": "passed", "tiny-onnx-none.onnx": "reference"}
    assert report["reference"]["kind"] == "artifact"
    rows = report["rows"]
    assert all(r["status"] == "ok" and r["torch_imported"] is False for r in rows), rows
    assert all(r["peak_rss_scope"] == "process per job" and r["peak_rss_mb"] > 0 for r in rows)
    assert report["gemm_peak_gflops"]["1"] > 0


def test_peak_rss_belongs_to_the_worker_not_its_parent():
    # Linux carries ru_maxrss across execve; a worker spawned by a big bench process must not inherit it.
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB touched in this (parent) process
    code = "from dermmobile.bench.latency import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(done.stdout) < 200, done.stdout
    assert ballast.sum() > 0


# -- the runtimes' per-image input path, and benchmarks/harness_overhead.py ---------------------------
def test_quantize_rounds_half_to_even_clips_and_reuses_buffers():
    from dermmobile.targets.base import quantize, to_layout

    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0], np.float32).reshape(1, 1, 1, 7)
    assert quantize(x, np.int8, 1.0, 3).ravel().tolist() == [3, 5, 5, 3, 1, 127, -128]
    assert quantize(x, np.uint8, 0.5, 128).ravel().tolist() == [129, 131, 133, 127, 125, 255, 0]
    image = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    out, work = np.empty((2, 5, 4, 3), np.int8), np.empty((2, 5, 4, 3), np.float32)
    nhwc = to_layout(image, "NHWC", out=work)
    assert nhwc is work and np.array_equal(nhwc, image.transpose(0, 2, 3, 1)) and to_layout(image, "NCHW") is image
    expected = quantize(np.ascontiguousarray(image.transpose(0, 2, 3, 1)), np.int8, 0.02, -5)
    assert quantize(nhwc, np.int8, 0.02, -5, out=out, work=work) is out and np.array_equal(out, expected)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory, tiny_checkpoint, synthetic_root) -> Path:
    """The fixture model as TFLite int8 (full integer, --int8-logits: int8 I/O, the path that quantizes the input)
    and fp32 in the Android layout (NHWC) and ONNX fp32."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("tiny-exports")
    for target, quantize, layout in (("tflite", "int8", "nhwc"), ("tflite", "none", "nhwc"), ("onnx", "none", "nchw")):
        args = ["export", "--checkpoint", str(tiny_checkpoint), "--target", target, "--quantize", quantize, "--out", str(out)]
        full_integer = ["--int8-logits"] if quantize == "int8" else []
        assert main([*args, "--layout", layout, "--calib-data", str(synthetic_root), *full_integer]) == 0
    return out


def test_tflite_runtime_feeds_exactly_what_the_plain_formula_gives(tiny_exports):
    """The reused-buffer input path gives the logits of a plain transpose + quantize per call, for 1 and for 3 images."""
    from ai_edge_litert.interpreter import Interpreter

    from dermmobile.targets import get_target

    for manifest in sorted(tiny_exports.glob("*tflite*.json")):
        artifact = load_artifact(manifest)
        runtime = get_target("tflite").load(artifact.path, artifact.manifest, threads=1)
        plain = Interpreter(model_path=str(artifact.path), num_threads=1)
        plain.allocate_tensors()
        inp, out = plain.get_input_details()[0], plain.get_output_details()[0]
        crop = artifact.manifest.preprocess["crop"]
        images = np.random.default_rng(1).normal(size=(3, 3, crop, crop)).astype(np.float32)  # NCHW, as the bench feeds
        expected = []
        for image in images:
            value = image[None].transpose(0, 2, 3, 1)
            if artifact.manifest.input.dtype == "int8":
                value = np.clip(np.round(value / inp["quantization"][0]) + inp["quantization"][1], -128, 127).astype(np.int8)
            plain.set_tensor(inp["index"], np.ascontiguousarray(value))
            plain.invoke()
            logits = plain.get_tensor(out["index"]).astype(np.float32)
            if artifact.manifest.output.dtype == "int8":
                logits = (logits - out["quantization"][1]) * np.float32(out["quantization"][0])
            expected.append(logits)
        assert np.array_equal(runtime.predict(images[:1]), expected[0]), manifest.name
        assert np.array_equal(runtime.predict(images), np.concatenate(expected)), manifest.name


def test_harness_overhead_script_compares_every_format_with_its_bare_runtime(tiny_exports, tiny_checkpoint, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import harness_overhead
    finally:
        sys.path.pop(0)
    stem = tmp_path / "overhead"
    args = [str(tiny_exports), "--checkpoint", str(tiny_checkpoint), "--threads", "1", "--iters", "3", "--rounds", "4"]
    assert harness_overhead.main([*args, "--out", str(stem)]) == 0
    report = json.loads(stem.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"pytorch-eager", *(p.name.removesuffix(".json") for p in tiny_exports.glob("*.json"))}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert len(row["bench_p50_ms"]) == len(row["bare_p50_ms"]) == len(row["ratio_per_round"]) == 4
        assert row["ratio"] == pytest.approx(statistics.median(b / r for b, r in zip(row["bench_p50_ms"], row["bare_p50_ms"])))
    assert {r["runtime"] for r in rows.values()} == {"pytorch", "tflite", "onnx"}
    assert report["machine"]["cores"] and report["threads"] == 1
    md = stem.with_suffix(".md").read_text()
    assert {r[0] for r in md_rows(md)} >= set(rows)
