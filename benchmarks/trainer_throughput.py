"""Training throughput, one process, one device: `dermmobile train` vs a bare torchvision loop vs the compute ceiling.

    .venv/bin/python benchmarks/trainer_throughput.py [--data DIR] [--arch efficientnet_lite0] [--batch-sizes 16]

For each batch size, on the same machine and in the same run (the script holds no training logic):

- trainer: `dermmobile.trainer.train` itself, img/s of its last epoch as it logs it (decoding and
  validation excluded). 1 epoch on a CPU, 2 on a GPU (the first pays one-time costs).
- bare loop: torchvision's ImageFolder + DataLoader (one worker per core, at most 8; pinned
  memory on CUDA) with the same augmentations as torchvision transforms (RandomResizedCrop,
  flips, RandomRotation, ColorJitter), the same model, optimiser, AMP and channels_last.
  One epoch of the training split's size, its first steps (worker start-up) untimed.
- ceiling: forward + backward + SGD step on one batch already on the device.
- input only: the trainer's batched augmentation, and the bare loop's DataLoader, with no model.

Writes `results/trainer-throughput-<arch>-<data>-<machine>.json/.md`. About 5 minutes on an
idle 2-core CPU at batch 16; a few minutes on a GPU for 16, 64 and 256.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import torch
from _results import machine_tag as results_machine_tag
from _results import write_result

from dermmobile.bench.sweep import machine_info, versions
from dermmobile.cores import usable_cores

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "sd198-27"
WARMUP_STEPS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(arch: str, classes: int, batch: int, device: torch.device):
    """The trainer's own model, optimiser and AMP choice, so every row trains the same network."""
    from dermmobile.train_config import TrainConfig
    from dermmobile.trainer import Dist, build_learner

    config = TrainConfig(data=Path("."), arch=arch, batch_size=batch, device=device.type, progress=False)
    return build_learner(config, classes, torch.ones(classes).numpy(), device, Dist())


def _step(learner, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.autocast(x.device.type, dtype=learner.amp, enabled=learner.amp is not None):
        loss = learner.criterion(learner.forward(x).float(), y)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()


def ceiling(arch: str, classes: int, batch: int, size: int, device: torch.device, steps: int) -> float:
    learner = _setup(arch, classes, batch, device)
    learner.train_mode()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    for _ in range(WARMUP_STEPS):
        _step(learner, x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        _step(learner, x, y)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def trainer(data: Path, arch: str, batch: int, device: torch.device, epochs: int, work: Path) -> dict:
    from dermmobile.trainer import TrainConfig, train

    records: list[dict] = []
    config = TrainConfig(data=data, arch=arch, out=work / f"trainer-{batch}", batch_size=batch, epochs=epochs,
                         patience=epochs, device=device.type, progress=False, on_epoch_end=records.append)  # fmt: skip
    result = train(config)
    return {"img_per_s": records[-1]["img_per_s"], "epochs": [r["img_per_s"] for r in records],
            "decode_s": result.metrics["decode_time_s"], "train_images": result.metrics["split_sizes"]["train"]}  # fmt: skip


def _bare_loader(data: Path, size: int, batch: int, images: int, device: torch.device):
    import torchvision
    from torchvision.transforms import v2

    from dermmobile.preprocess import DEFAULT_SPEC
    from dermmobile.train_config import AugmentConfig

    aug = AugmentConfig()
    transform = v2.Compose([
        v2.PILToTensor(), v2.RandomRotation(aug.rotation, interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
        v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(DEFAULT_SPEC.mean, DEFAULT_SPEC.std),
    ])  # fmt: skip
    dataset = torchvision.datasets.ImageFolder(str(data), transform=transform)
    subset = torch.utils.data.Subset(dataset, range(min(images, len(dataset))))
    workers = min(8, usable_cores())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=True, drop_last=True)  # fmt: skip
    return loader, len(dataset.classes)


def bare_loop(data: Path, arch: str, size: int, batch: int, images: int, device: torch.device) -> dict:
    loader, classes = _bare_loader(data, size, batch, images, device)
    learner = _setup(arch, classes, batch, device)
    learner.train_mode()
    timed, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        _step(learner, x, y.to(device, non_blocking=True))
        if step == WARMUP_STEPS - 1:
            _sync(device)
            timed, start = 0, time.perf_counter()
        elif step >= WARMUP_STEPS:
            timed += len(y)
    _sync(device)
    rate = timed / (time.perf_counter() - start)
    # The input pipeline alone: the same DataLoader, no model.
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        x.to(device, non_blocking=True)
        count += len(x)
    _sync(device)
    return {"img_per_s": rate, "input_only_img_per_s": count / (time.perf_counter() - start), "workers": loader.num_workers}


def trainer_input_only(data: Path, arch: str, batch: int, images: int, device: torch.device) -> float:
    """The trainer's batched augmentation on the device, no model (decoded images from its own decoder)."""
    from dermmobile.augment import ImageBank
    from dermmobile.data import scan_image_folder
    from dermmobile.train_config import TrainConfig
    from dermmobile.trainer import decode_all, default_spec, epoch_batches

    folder = scan_image_folder(data)
    spec = default_spec(arch)
    wanted = set(range(min(images, len(folder.samples))))
    decoded = decode_all(folder, wanted, set(), spec, usable_cores(), None)
    indices = sorted(decoded.train)
    bank = ImageBank.build([decoded.train[i] for i in indices], [folder.samples[i].label for i in indices], True)
    bank = bank.place(device)
    config = TrainConfig(data=data, arch=arch, batch_size=batch)
    for _batch in epoch_batches(bank, list(range(min(len(indices), batch * WARMUP_STEPS))), config, spec, 0, 0, device):
        pass
    _sync(device)
    start = time.perf_counter()
    for _batch in epoch_batches(bank, list(range(len(indices))), config, spec, 1, 0, device):
        pass
    _sync(device)
    return len(indices) / (time.perf_counter() - start)


def machine_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return results_machine_tag()


def markdown(report: dict) -> str:
    from tabulate import tabulate

    rows = [[r["batch"], f"{r['trainer']['img_per_s']:.1f}", f"{r['bare']['img_per_s']:.1f}", f"{r['ceiling']:.1f}",
             f"{r['trainer']['img_per_s'] / r['bare']['img_per_s']:.2f}x", f"{r['trainer']['img_per_s'] / r['ceiling']:.2f}",
             f"{r['trainer_input_only']:.0f}", f"{r['bare']['input_only_img_per_s']:.0f}"] for r in report["rows"]]  # fmt: skip
    headers = ["batch", "dermmobile train img/s", "bare torchvision loop img/s", "compute ceiling img/s",
               "trainer / bare", "trainer / ceiling", "trainer input only img/s", "bare input only img/s"]  # fmt: skip
    machine = report["machine"]
    return "\n".join([
        f"# Training throughput: {report['arch']} on {report['data']} ({report['device']})", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load average (1, 5, 15 min) {machine['load_average_1_5_15min']} "
        f"before the run and {report['machine_after']['load_average_1_5_15min']} after"
        + (f"; GPU {report['gpu']}" if report.get("gpu") else "") + ". Ratios measured in one run compare; "
        "absolute rates on a loaded machine do not.", "",
        tabulate(rows, headers, tablefmt="github", disable_numparse=True), "",
        f"Trainer: the last of {report['trainer_epochs']} epoch(s) as it logs it (decoding and validation excluded). "
        f"Bare loop: torchvision ImageFolder + DataLoader ({report['rows'][0]['bare']['workers']} workers), first "
        f"{WARMUP_STEPS} steps untimed. Ceiling: forward + backward + SGD on one batch already on the device.", "",
        f"Versions: {report['versions']}", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 16 on a CPU; 16 64 256 on a GPU")
    parser.add_argument("--ceiling-steps", type=int, default=None, help="default: 10 on a CPU, 50 on a GPU")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from dermmobile.models import model_info
    from dermmobile.trainer import Dist, resolve_device

    device = resolve_device(args.device, Dist())
    gpu = device.type == "cuda"
    sizes = args.batch_sizes or ([16, 64, 256] if gpu else [16])
    size = model_info(args.arch).input_size
    report = {"arch": args.arch, "data": args.data.name, "device": str(device), "machine": machine_info(),
              "gpu": torch.cuda.get_device_name(device) if gpu else None, "versions": versions(),
              "trainer_epochs": 2 if gpu else 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="trainer-throughput-") as work:
        for batch in sizes:
            row: dict = {"batch": batch}
            row["trainer"] = trainer(args.data, args.arch, batch, device, report["trainer_epochs"], Path(work))
            images = row["trainer"]["train_images"]
            row["bare"] = bare_loop(args.data, args.arch, size, batch, images, device)
            row["ceiling"] = ceiling(args.arch, 27, batch, size, device, args.ceiling_steps or (50 if gpu else 10))
            row["trainer_input_only"] = trainer_input_only(args.data, args.arch, batch, images, device)
            report["rows"].append(row)
            print(f"batch {batch}: trainer {row['trainer']['img_per_s']:.1f}, bare {row['bare']['img_per_s']:.1f}, "
                  f"ceiling {row['ceiling']:.1f} img/s", flush=True)  # fmt: skip
    report["machine_after"] = {"load_average_1_5_15min": machine_info()["load_average_1_5_15min"]}
    tag = f"trainer-throughput-{args.arch}-{args.data.name}-{machine_tag(device)}"
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, _ = write_result(args.out, tag, report, markdown(report))
    print(f"wrote {json_path} and .md ({len(report['rows'])} batch sizes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
