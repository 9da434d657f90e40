"""The web page's preprocessing (web_demo/preprocess.js) against Python, bit for bit, with Node's test runner.

Golden samples are written here (v2 in both layouts, the default and a small spec, phone-sized
photos; a v1 set the module must refuse) and web_demo/test/preprocess.test.mjs checks them with
`node --test`. Needs Node 18+ (no npm packages); without it the test skips locally and fails
when CI=true, as the Java tests do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dermmobile.android import write_golden_samples
from dermmobile.preprocess import ALGORITHM_V1, PreprocessSpec
from dermmobile.synthetic import PAPER_CLASSES
from tests.golden_images import SIZES, golden_manifest, phone_images, small_images

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "web_demo" / "preprocess.js"
NODE_TEST = ROOT / "web_demo" / "test" / "preprocess.test.mjs"

CASES = [  # (set name, spec, layout)
    ("small-nchw", PreprocessSpec(resize=64, crop=56), "NCHW"),
    ("default-nhwc", PreprocessSpec(), "NHWC"),
    ("default-nchw", PreprocessSpec(), "NCHW"),
    ("v1-small-nchw", PreprocessSpec(resize=64, crop=56, algorithm=ALGORITHM_V1), "NCHW"),
]


class FixedLogits:
    """A Runtime that answers zeros: the JavaScript side checks inputs only, so no model is needed."""

    name = "fixed-logits"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), len(PAPER_CLASSES)), np.float32)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        message = "the JavaScript tests need Node.js 18+ (apt-get install -y nodejs)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return node


def _run_node(test_file: Path, golden: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_node(), "--test", str(test_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DERMMOBILE_GOLDEN": str(golden)},
    )


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("web-golden")
    small = small_images(tmp / "small")
    large = phone_images(tmp / "large")
    root = tmp / "sets"
    for name, spec, layout in CASES:
        v1 = spec.algorithm == ALGORITHM_V1  # v1 decodes at full size: the 12 MP photo is above the golden limit
        images = [*small, *(path for photo, path in large.items() if not (v1 and photo == "phone"))]
        write_golden_samples(images, golden_manifest(spec, layout, "float32"), FixedLogits(), root / name)
    return root


def test_javascript_matches_python_bit_for_bit(golden_root):
    result = _run_node(NODE_TEST, golden_root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    v2_samples = 3 * (len(SIZES) + 4)
    v1_samples = len(SIZES) + 3
    expected = f"golden samples checked: {v2_samples} bit-identical, {v1_samples} v1 refused, in {len(CASES)} set(s)"
    assert expected in output, output
    assert re.search(r"# fail 0\b", output), output
    index = json.loads((golden_root / "default-nhwc" / "golden.json").read_text())
    assert any(s["decode"]["factor"] == 8 for s in index["samples"])  # the 12 MP JPEG was in it, decoded at 1/8


# One constant of the JavaScript resize, changed slightly: the golden test must notice.
DRIFTS = {
    "pass-rounding": ("const HALF = 1 << (PRECISION_BITS - 1);", "const HALF = 1 << (PRECISION_BITS - 2);"),
    "filter-centre": ("const center = (first + k + 0.5) * scale;", "const center = (first + k + 0.5001) * scale;"),
    "table": ("t[v] = (v / scale - mean[c]) / std[c];", "t[v] = Math.fround(v / scale - mean[c]) / std[c];"),
    "decode-factor": ("Math.floor(shorter / f) >= resize", "Math.floor(shorter / f) > resize"),
}


@pytest.mark.parametrize(("original", "drifted"), DRIFTS.values(), ids=DRIFTS.keys())
def test_javascript_fails_when_it_drifts(golden_root, tmp_path, original, drifted):
    copy = tmp_path / "web_demo"
    (copy / "test").mkdir(parents=True)
    shutil.copy(NODE_TEST, copy / "test" / NODE_TEST.name)
    text = MODULE.read_text()
    assert text.count(original) == 1, f"preprocess.js no longer contains {original!r}; update DRIFTS"
    (copy / MODULE.name).write_text(text.replace(original, drifted))
    result = _run_node(copy / "test" / NODE_TEST.name, golden_root)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "drifted from dermmobile.preprocess" in output, output
