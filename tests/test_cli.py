"""The command line: instant help, version, predict, inspect and error exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from dermmobile import __version__
from dermmobile.cli import COMMANDS, main


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from dermmobile.cli import build_parser; build_parser().format_help();"
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'onnx', 'coremltools', 'executorch', 'matplotlib') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command_and_version(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    for command in ["train", "evaluate", "export", "bench", "predict", "inspect", "demo"]:
        assert command in text and command in COMMANDS
    proc = subprocess.run([sys.executable, "-m", "dermmobile", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"dermmobile {__version__}"


def test_predict_with_a_checkpoint(tiny_checkpoint, synthetic_root, capsys):
    image = synthetic_root / "ulcer" / "ulcer_000.png"
    assert main(["predict", str(image), "--model", str(tiny_checkpoint), "--json", "--topk", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    (result,) = out["results"]
    assert len(result["top"]) == 2 and result["top"][0]["label"] == "ulcer"
    assert result["top"][0]["probability"] > result["top"][1]["probability"]
    assert "not a diagnosis" in out["note"]


def test_predict_reports_bad_images_and_exits_2(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert main(["predict", str(bad), "--model", str(tiny_checkpoint)]) == 2
    assert "empty file" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["predict", "x.jpg", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing.onnx")]) == 2
    assert "no manifest" in capsys.readouterr().err
