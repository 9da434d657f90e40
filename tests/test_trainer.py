"""Trainer and evaluation: tiny_cnn on small synthetic images (fast), efficientnet_lite0 on real photos (realdata)."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dermmobile.checkpoint import load_checkpoint, read_meta
from dermmobile.errors import BadInputError
from dermmobile.evaluate import evaluate_checkpoint
from dermmobile.preprocess import PreprocessSpec
from dermmobile.synthetic import make_synthetic_dataset
from dermmobile.trainer import TrainConfig, train

SPEC = PreprocessSpec(resize=36, crop=32)  # small images keep every run here to a few seconds


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    # One torch thread: tiny_cnn steps are too small to split, and OpenMP threads spinning on a
    # busy 2-core machine made them ten times slower.
    base = TrainConfig(data=data, arch="tiny_cnn", out=out, weights="none", epochs=2, lr=0.05, device="cpu", spec=SPEC,
                       progress=False, workers=2, threads=1)  # fmt: skip
    return replace(base, **overrides)


def tensors(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def log_records(run: Path) -> list[dict]:
    timing = ("time_s", "img_per_s")
    lines = (run / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", per_class=10, size=48)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "trained"
    return train(config(data, out, epochs=8, patience=8))


def test_training_learns_far_above_chance_and_writes_its_outputs(trained, data):
    metrics = trained.metrics
    # 9 classes: chance is 11 %. Training that does not learn stays near it.
    assert metrics["test"]["accuracy"] >= 0.3, metrics["test"]
    assert metrics["val"]["accuracy"] >= 0.3, metrics["val"]
    for name in ("best.safetensors", "last.pt", "log.jsonl", "metrics.json", "confusion-test.md", "confusion-test.png"):
        assert (trained.out / name).is_file(), name
    records = log_records(trained.out)
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    meta = read_meta(trained.checkpoint)
    assert meta.arch == "tiny_cnn" and meta.preprocess == SPEC.to_dict()
    assert meta.metrics["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert meta.args["lr"] == 0.05 and meta.args["batch_size"] == 16
    test_files = meta.data["test_files"]
    assert len(test_files) == metrics["split_sizes"]["test"] == 18  # 20 % of 10 per class
    assert not set(test_files) & set(meta.data["val_files"])
    assert meta.data["root"] == str(data.resolve())


def test_evaluate_scores_the_recorded_test_split_on_the_training_folder(trained, data, tmp_path):
    result = evaluate_checkpoint(trained.checkpoint, data, out=tmp_path / "eval")
    assert result.split == "test"
    assert sorted(result.names) == sorted(read_meta(trained.checkpoint).data["test_files"])
    # Same weights, same spec, same images: the trainer's test score is reproduced exactly.
    assert result.accuracy == pytest.approx(trained.metrics["test"]["accuracy"])
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["accuracy"] == pytest.approx(result.accuracy)
    assert len(report["per_class"]) == 9 and np.asarray(report["confusion_matrix"]).sum() == len(result.names)
    markdown = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "Table 3" in markdown and "Table 4" in markdown and re.search(r"^\| acne +\| ", markdown, re.MULTILINE)
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 0


def test_evaluate_scores_every_image_of_another_folder_and_refuses_other_classes(trained, tmp_path):
    other = make_synthetic_dataset(tmp_path / "other", per_class=3, size=48, seed=1)
    result = evaluate_checkpoint(trained.checkpoint, other)
    assert result.split == "all" and len(result.names) == 27
    with pytest.raises(BadInputError, match="not the folder"):
        evaluate_checkpoint(trained.checkpoint, other, split="test")
    fewer = make_synthetic_dataset(tmp_path / "fewer", per_class=2, size=48, classes=["acne", "ulcer"])
    with pytest.raises(BadInputError, match="class lists differ"):
        evaluate_checkpoint(trained.checkpoint, fewer)


def test_early_stopping_and_a_frozen_backbone_keep_backbone_weights_and_statistics(data, tmp_path):
    torch.manual_seed(123)
    from dermmobile.models import build_model

    start = build_model("tiny_cnn", 9)
    torch.save(start.state_dict(), tmp_path / "start.pth")
    # lr 0 leaves the head as it is; with BatchNorm statistics frozen, the validation loss is then
    # exactly the same every epoch, so it stops after epoch 1 + patience.
    result = train(config(data, tmp_path / "run", weights=str(tmp_path / "start.pth"), freeze_backbone=True,
                          lr=0.0, epochs=10, patience=2))  # fmt: skip
    assert result.metrics["stopped_early"] and result.metrics["epochs_run"] == 3 and result.metrics["best_epoch"] == 1
    assert len(log_records(tmp_path / "run")) == 3
    final = load_checkpoint(result.checkpoint).model.state_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(final[name], value), f"{name} changed although the backbone is frozen"


def test_an_interrupted_run_resumes_to_the_same_weights(data, tmp_path):
    # The schedule changes every step (warm-up) and every epoch (step decay), so it must resume too.
    settings = {"epochs": 3, "lr_decay": "step", "lr_step": 1, "lr_gamma": 0.5, "warmup_epochs": 0.5}
    straight = train(config(data, tmp_path / "straight", **settings))

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM through the CLI) raises

    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "resumed", on_epoch_end=interrupt, **settings))
    state = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=True)
    assert state["state"]["epoch"] == 1
    load_checkpoint(tmp_path / "resumed" / "best.safetensors")  # whole and readable after the interrupt
    with pytest.raises(BadInputError, match="--resume"):
        train(config(data, tmp_path / "resumed", **settings))
    resumed = train(config(data, tmp_path / "resumed", resume=True, **settings))

    last_a, last_b = tensors(tmp_path / "straight" / "last.pt"), tensors(tmp_path / "resumed" / "last.pt")
    assert last_a.keys() == last_b.keys()
    for name in last_a:
        assert torch.equal(last_a[name], last_b[name]), name
    assert log_records(tmp_path / "straight") == log_records(tmp_path / "resumed")
    assert resumed.metrics["test"] == straight.metrics["test"]
    with pytest.raises(BadInputError, match="different settings"):
        train(config(data, tmp_path / "resumed", resume=True, **{**settings, "lr": 0.01}))


@pytest.fixture(scope="module")
def one_epoch_run(data, tmp_path_factory) -> Path:
    """A 2-epoch run interrupted after epoch 1, whose last.pt the hostile-resume tests tamper with (in copies)."""
    out = tmp_path_factory.mktemp("resumable") / "run"

    def interrupt(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(data, out, epochs=2, on_epoch_end=interrupt))
    return out


def _tamper(payload: dict, case: str):
    model = payload["model"]
    first = next(iter(model))
    changes = {
        "not a dict": lambda: [1, 2, 3],
        "missing key": lambda: {k: v for k, v in payload.items() if k != "optimizer"},
        "wrong format": lambda: {**payload, "format": "something-else"},
        "state is a string": lambda: {**payload, "state": "epoch 1"},
        "epoch is a string": lambda: {**payload, "state": {**payload["state"], "epoch": "1"}},
        "negative epoch": lambda: {**payload, "state": {**payload["state"], "epoch": -4}},
        "missing tensor": lambda: {**payload, "model": {k: v for k, v in model.items() if k != first}},
        "tensor of the wrong shape": lambda: {**payload, "model": {**model, first: torch.zeros(3, 3)}},
        "model is a list": lambda: {**payload, "model": list(model.values())},
        "momentum of the wrong shape": lambda: {**payload, "optimizer": {
            **payload["optimizer"], "state": {0: {"momentum_buffer": torch.zeros(7)}}}},
        "optimizer group of another model": lambda: {**payload, "optimizer": {
            **payload["optimizer"], "param_groups": [{**payload["optimizer"]["param_groups"][0], "params": [0]}]}},
        "lr is a string": lambda: {**payload, "optimizer": {
            **payload["optimizer"], "param_groups": [{**payload["optimizer"]["param_groups"][0], "lr": "0.1"}]}},
        "rng state is not bytes": lambda: {**payload, "torch_rng": torch.zeros(5)},
        "fingerprint is a list": lambda: {**payload, "fingerprint": ["seed"]},
    }  # fmt: skip
    return changes[case]()


@pytest.mark.parametrize("case", ["not a dict", "missing key", "wrong format", "state is a string", "epoch is a string",
                                  "negative epoch", "missing tensor", "tensor of the wrong shape", "model is a list",
                                  "momentum of the wrong shape", "optimizer group of another model", "lr is a string",
                                  "rng state is not bytes", "fingerprint is a list"])  # fmt: skip
def test_resume_refuses_a_last_pt_of_unexpected_structure(one_epoch_run, data, tmp_path, case):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    payload = torch.load(out / "last.pt", weights_only=True)
    torch.save(_tamper(payload, case), out / "last.pt")
    with pytest.raises(BadInputError, match="cannot be resumed"):
        train(config(data, out, epochs=2, resume=True))


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip or a pickle", b"PK\x03\x04 truncated zip"])
def test_resume_of_an_unreadable_last_pt_exits_2_without_a_traceback(one_epoch_run, data, tmp_path, capsys, content):
    import shutil

    from dermmobile.cli import main

    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    (out / "last.pt").write_bytes(content)
    code = main(["train", "--data", str(data), "--arch", "tiny_cnn", "--weights", "none", "--epochs", "2", "--lr", "0.05",
                 "--image-size", "32", "--device", "cpu", "--threads", "1", "--out", str(out), "--resume"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot be resumed" in err and "Traceback" not in err


def test_resume_refuses_a_damaged_log_or_best_checkpoint(one_epoch_run, data, tmp_path):
    import shutil

    for name, content in [("log.jsonl", b"{not json\n"), ("best.safetensors", b"\x00" * 10)]:
        out = tmp_path / name
        shutil.copytree(one_epoch_run, out)
        (out / name).write_bytes(content)
        with pytest.raises(BadInputError, match="cannot be resumed"):
            train(config(data, out, epochs=2, resume=True))


def test_sigterm_through_the_cli_keeps_the_last_good_checkpoint(data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "dermmobile", "train", "--data", str(data), "--arch", "tiny_cnn", "--weights", "none",
               "--epochs", "500", "--patience", "500", "--image-size", "32", "--device", "cpu", "--threads", "1",
               "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert 1 <= state["state"]["epoch"] < 500 and not state["state"]["stopped_early"]
    load_checkpoint(out / "best.safetensors")
    assert not list(out.glob("*.partial"))


def test_kfold_reports_each_fold_and_mean_and_std(data, tmp_path):
    result = train(config(data, tmp_path / "kfold", folds=3, epochs=1))
    summary = json.loads((tmp_path / "kfold" / "metrics.json").read_text())
    accuracies = [fold["val_accuracy"] for fold in summary["per_fold"]]
    assert len(accuracies) == 3
    assert summary["val_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert summary["val_accuracy_std"] == pytest.approx(np.std(accuracies))
    metas = [read_meta(tmp_path / "kfold" / f"fold-{k}" / "best.safetensors") for k in range(3)]
    val_sets = [set(meta.data["val_files"]) for meta in metas]
    test = set(metas[0].data["test_files"])
    assert sorted(len(v) for v in val_sets) == [18, 27, 27]  # 8 non-test images per class dealt 3, 3, 2 into the folds
    assert not (val_sets[0] & val_sets[1]) and not (val_sets[1] & val_sets[2]) and not (val_sets[0] & val_sets[2])
    assert len(set().union(*val_sets)) + len(test) == 90 and not test & set().union(*val_sets)
    assert result.checkpoint == tmp_path / "kfold" / f"fold-{summary['best_fold']}" / "best.safetensors"


def _ddp_rank(rank: int, port: int, data: str, out: str, dump: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")  # fmt: skip
    result = train(config(Path(data), Path(out), epochs=1))
    torch.save(result.model.state_dict(), Path(dump) / f"rank{rank}.pt")


def test_ddp_two_cpu_ranks_end_with_identical_weights(data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # read by the spawned ranks as torch loads
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(port, str(data), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
    torch.manual_seed(0)
    from dermmobile.models import build_model

    init = build_model("tiny_cnn", 9).state_dict()
    assert not torch.equal(init["10.weight"], rank0["10.weight"]), "no training happened"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(log_records(tmp_path / "run")) == 1  # rank 0 alone writes


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", per_class=6, size=48, classes=["acne", "ulcer", "wheal"])
    (data / "acne" / "empty.png").write_bytes(b"")
    good = (data / "ulcer" / "ulcer_000.png").read_bytes()
    (data / "ulcer" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "wheal" / "text.jpg").write_text("not an image")
    result = train(config(data, tmp_path / "run", epochs=1))
    reported = dict(result.bad_images)
    assert set(reported) == {"acne/empty.png", "ulcer/truncated.png", "wheal/text.jpg"}
    assert "0 bytes" in reported["acne/empty.png"]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())["bad_images"]
    assert {entry["path"] for entry in on_disk} == set(reported)
    meta = read_meta(result.checkpoint)
    assert {entry["path"] for entry in meta.data["bad_images"]} == set(reported)
    assert not set(reported) & set(meta.data["test_files"])


def test_the_cli_is_built_from_the_config_and_recipes_set_its_defaults():
    import argparse

    from dermmobile.commands.train import add_arguments
    from dermmobile.train_config import RECIPES, cli_defaults, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def parse(*extra):
        args = parser.parse_args(["--data", "d", "--arch", "tiny_cnn", *extra])
        return config_from_args(args, args.recipe)

    assert parse() == TrainConfig(data=Path("d"), arch="tiny_cnn")  # every default comes from the dataclass
    assert TrainConfig(data=Path("d"), arch="x").weights == "DEFAULT"  # the Python API starts from ImageNet too
    paper = parse("--recipe", "paper")
    assert {k: getattr(paper, k) for k in RECIPES["paper"]} == RECIPES["paper"] and paper.recipe == "paper"
    assert parse("--recipe", "paper", "--lr", "0.05").lr == 0.05  # an explicit option beats the recipe
    assert parse("--no-amp").amp is False and parse("--freeze-backbone").freeze_backbone
    help_text = " ".join(parser.format_help().split())
    for name, default in cli_defaults().items():
        if default is not None and not isinstance(default, bool):
            assert f"--{name.replace('_', '-')}" in help_text and f"Default: {default}" in help_text, name
    assert "(--recipe paper: 0.001)" in help_text and "efficientnet_lite2" in help_text and "not a diagnosis" in help_text


def test_lr_schedule_warms_up_linearly_then_decays():
    from dermmobile.trainer import lr_at

    cosine = TrainConfig(data=Path("d"), arch="tiny_cnn", lr=0.1, epochs=4, warmup_epochs=1.0)
    assert [lr_at(cosine, s, 10) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert lr_at(cosine, 10, 10) == pytest.approx(0.1) and lr_at(cosine, 25, 10) == pytest.approx(0.05)
    assert lr_at(cosine, 39, 10) < 0.001
    step = TrainConfig(data=Path("d"), arch="tiny_cnn", lr=0.1, epochs=9, lr_decay="step", lr_step=3, lr_gamma=0.1)
    assert [lr_at(step, s, 10) for s in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_an_epoch_reads_the_device_once(data, monkeypatch):
    """No .item()/.tolist() per step: the host waits for the device only at the end of the epoch."""
    from PIL import Image

    from dermmobile.augment import ImageBank
    from dermmobile.data import scan_image_folder
    from dermmobile.trainer import Dist, build_learner, epoch_batches, train_one_epoch

    folder = scan_image_folder(data)
    images = [np.asarray(Image.open(s.path).convert("RGB")) for s in folder.samples[:40]]
    bank = ImageBank.build(images, [s.label for s in folder.samples[:40]], landscape=True)
    cfg = config(data, Path("unused"), batch_size=8)
    learner = build_learner(cfg, 9, np.ones(9), torch.device("cpu"), Dist())
    reads = []
    for name in ("item", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k))
    batches = epoch_batches(bank, list(range(40)), cfg, SPEC, 1, 0, torch.device("cpu"))
    stats = train_one_epoch(learner, batches, lambda step: 0.05, 0)
    assert stats.images == 40 and reads == ["tolist"], reads  # 5 steps, one read


def test_cli_train_then_evaluate(data, tmp_path, capsys):
    from dermmobile.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--data", str(data), "--arch", "tiny_cnn", "--weights", "none", "--epochs", "1", "--image-size", "32",
                 "--device", "cpu", "--lr", "0.05", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "held-out test accuracy" in capsys.readouterr().out
    assert read_meta(out / "best.safetensors").preprocess["crop"] == 32
    assert main(["evaluate", "--checkpoint", str(out / "best.safetensors"), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["images"] == 18
    assert main(["train", "--data", str(data), "--arch", "no_such_net", "--out", str(tmp_path / "x")]) == 2


# The default recipe reached 60-62 % held-out top-1 on sd198-27 (train_config.RECIPE_HELP); the floor leaves room
# for another CPU's arithmetic.
REAL_FLOOR = 0.50


@pytest.mark.realdata
def test_efficientnet_lite0_on_real_photos_beats_a_floor(lite0_run):
    result = lite0_run  # conftest.lite0_run: the default recipe
    assert result.metrics["split_sizes"]["test"] >= 100
    # 27 classes: chance is 3.7 %.
    assert result.metrics["test"]["accuracy"] >= REAL_FLOOR, result.metrics["test"]


@pytest.mark.parametrize(
    "overrides",
    [{"lr": float("nan")}, {"lr": float("inf")}, {"lr": -0.1}, {"weight_decay": float("nan")}, {"momentum": float("nan")}],
)
def test_numbers_that_cannot_train_are_refused_before_any_work(tmp_path, overrides):
    # NaN passes `lr < 0` unnoticed: a NaN learning rate once trained five NaN epochs, then exit 1.
    with pytest.raises(BadInputError, match="must be"):
        config(tmp_path / "data", tmp_path / "run", **overrides).check()
