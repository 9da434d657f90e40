"""Shared fixtures: a synthetic dataset, a small confident checkpoint, real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sd198-27"
SMALL_SPEC = {"resize": 72, "crop": 64}


def pytest_collection_modifyitems(config, items):
    """Real-data tests skip only where ../shared/data is absent; in CI its absence is a failure."""
    if REAL_DATA.is_dir():
        return
    for item in items:
        if "realdata" in item.keywords:
            if os.environ.get("CI"):
                item.add_marker(pytest.mark.xfail(reason=f"{REAL_DATA} missing in CI", strict=True, run=False))
            else:
                item.add_marker(pytest.mark.skip(reason=f"{REAL_DATA} not found"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from dermmobile.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=10, size=80)


@pytest.fixture(scope="session")
def small_spec():
    from dermmobile.preprocess import PreprocessSpec

    return PreprocessSpec(**SMALL_SPEC)


def train_tiny(root: Path, spec, steps: int = 600, seed: int = 0):
    """A quick plain training loop (not the trainer under test) giving a confident tiny_cnn.

    Confident matters: int8 flips happen where the top-two logits are close. 600 steps give
    100 % training accuracy with every top-1 margin above 3 logits, and then every int8
    toolchain keeps 100 % agreement; at 150 steps (82 %, margins near 0) they did not."""
    import torch

    from dermmobile.data import load_images, scan_image_folder
    from dermmobile.models import build_model

    torch.manual_seed(seed)
    folder = scan_image_folder(root)
    images = load_images(folder.samples, spec, folder.root)
    model = build_model("tiny_cnn", len(folder.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(images.arrays)
    y = torch.from_numpy(images.targets)
    generator = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(generator.choice(len(x), 32))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model.eval(), folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_root, small_spec) -> Path:
    from dermmobile.checkpoint import CheckpointMeta, save_checkpoint

    model, folder = train_tiny(synthetic_root, small_spec)
    meta = CheckpointMeta("tiny_cnn", folder.classes, small_spec.to_dict(), data={"root": str(synthetic_root)})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, meta)


@pytest.fixture(scope="session")
def lite0_run(tmp_path_factory, real_data):
    """`dermmobile train --data sd198-27 --arch efficientnet_lite0` as a user runs it: the default recipe (full
    fine-tuning, 10 epochs), shared by every real-data test that needs a trained model. About 6 minutes on 2 cores.
    Why not a cheaper model: a head-only run (2 minutes) has the margins of a frozen backbone, and its int8 files
    miss the gate whatever the export does (GPTQ and the fallback reached 94.8 % on its tuning photos), so it could
    not show that the default export of a real model passes."""
    from dermmobile.trainer import TrainConfig, train

    config = TrainConfig(data=real_data, arch="efficientnet_lite0", out=tmp_path_factory.mktemp("lite0"),
                         weights="DEFAULT", device="cpu", progress=False)  # fmt: skip
    return train(config)


@pytest.fixture(scope="session")
def lite0_checkpoint(lite0_run) -> Path:
    return lite0_run.checkpoint
