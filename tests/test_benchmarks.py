"""The benchmark scripts end to end on real photos, at CI size (one architecture, one thread setting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
def test_export_matrix_and_bench_pipeline(lite0_checkpoint, real_data, tmp_path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "export_matrix.py"), "--checkpoint", str(lite0_checkpoint),
        "--data", str(real_data), "--targets", "onnx", "tflite", "coreml", "--quantizations", "none",
        "--threads", "1", "--iters", "5", "--no-compile", "--export-dir", str(tmp_path / "export"), "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    (summary,) = tmp_path.glob("export-matrix-efficientnet_lite0-sd198-27-*.json")
    report = json.loads(summary.read_text())
    rows = {(r["target"], r["quantization"]): r for r in report["exports"]}
    assert rows[("onnx", "none")]["status"] == "passed" and rows[("tflite", "none")]["status"] == "passed"
    assert rows[("coreml", "none")]["status"] in ("not-run", "passed")
    bench = json.loads((tmp_path / report["bench"]).read_text())
    assert bench["data"]["images"] == 143  # the held-out test split recorded in the checkpoint
    eager = next(r for r in bench["rows"] if r["artifact"] == "pytorch-eager")
    onnx = next(r for r in bench["rows"] if r["format"] == "onnx")
    assert eager["latency_ms"]["p50"] > 0 and onnx["latency_ms"]["p50"] > 0 and onnx["threads"] == 1
    for name in ("bench.md", "accuracy-latency.png"):
        assert (tmp_path / report["bench"]).with_name(name).is_file()


@pytest.mark.realdata
def test_decode_floor_splits_file_to_tensor_into_its_steps(real_data, tmp_path):
    stem = tmp_path / "floor"
    command = [sys.executable, str(ROOT / "benchmarks" / "decode_floor.py"), "--data", str(real_data), "--images", "3",
               "--rounds", "1", "--out", str(stem)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(stem.with_suffix(".json").read_text())
    rows = {row["photos"]: row for row in report["rows"]}
    assert rows["images"]["files"] == 3 and rows["phone_12mp"]["decoded_size_p50"] == [504, 378]  # 4032 x 3024 at 1/8
    steps = ("decode_at_spec_factor", "decode_at_1_8_floor", "spec_decode_file", "horizontal_pass", "vertical_pass", "table")
    assert all(row[f"{step}_ms"] > 0 for row in rows.values() for step in steps)
    assert "entropy-decode floor" in stem.with_suffix(".md").read_text()
