"""The bench sweep: every artifact (and the PyTorch reference) x every thread count, one report.

It picks the images (the checkpoint's held-out test files when --data is its training
root), preprocesses them once per preprocessing spec, measures the machine's fp32 GEMM
peak, runs one worker job per subject and thread count, then compares each artifact's
logits with the reference's. A job that fails becomes a row with its error; the sweep
goes on. Jobs come back as typed JobResults (results.py); rows.py turns them into the
report, the JSON documented in dermmobile/bench/README.md.

This module never imports torch: jobs that need it import it in their own process
(with --in-process, in this one).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.bench.latency import THREAD_ENV, GemmPeak
from dermmobile.bench.results import JobResult, read_job_result
from dermmobile.bench.rows import Measured, build_report
from dermmobile.bench.worker import Job, run_job
from dermmobile.cores import usable_cores
from dermmobile.errors import BadInputError, DermmobileError

REFERENCE = "pytorch-eager"
COMPILED = "pytorch-compile"


@dataclass
class BenchConfig:
    data: Path
    artifacts: Path | None = None
    checkpoint: Path | None = None
    threads: list[int] = field(default_factory=lambda: [usable_cores()])
    warmup: int = 10
    iters: int = 100
    split: str = "test"  # test: the checkpoint's held-out files when --data is its training root; all: every image
    e2e_images: int = 20
    phone_runs: int = 10  # end-to-end runs on a generated 12 MP JPEG (0 skips it)
    compile: bool = True  # also time torch.compile of the checkpoint, when there is one
    isolate: bool = True  # one subprocess per job (per-artifact peak RSS, crash isolation)
    timeout_s: float = 3600
    gemm_size: int = 2048

    def check(self) -> None:
        if self.artifacts is None and self.checkpoint is None:
            raise BadInputError("nothing to bench: give --artifacts export/RUN and/or --checkpoint CKPT")
        if not self.threads or min(self.threads) < 1:
            raise BadInputError(f"--threads must be positive integers, got {self.threads}")
        if self.iters < 1 or self.warmup < 0 or self.e2e_images < 0 or self.phone_runs < 0:
            raise BadInputError(
                f"--iters must be >= 1, --warmup, --e2e-images and --phone-runs >= 0; got {self.iters}, {self.warmup}, "
                f"{self.e2e_images} and {self.phone_runs}"
            )
        if self.split not in ("test", "all"):
            raise BadInputError(f"--split must be test or all, got {self.split!r}")


@dataclass
class Subject:
    """One thing to measure: the checkpoint's model (eager or compiled) or one artifact."""

    name: str
    kind: str  # checkpoint | artifact
    path: Path
    format: str
    quantization: str
    labels: list[str]
    preprocess: dict
    role: str = "artifact"  # reference | compiled | artifact
    file_bytes: int | None = None
    sha256: str = ""
    flops: int | None = None  # from the manifest, when the exporter recorded it
    error: str | None = None  # the manifest could not be read or verified
    bad_input: bool = False  # the error is a refused file (exit 2), not a measurement failure
    float_layers: list[str] | None = None  # int8: layers the fallback left in float (manifest)
    float_macs_share: float | None = None  # their share of the model's MACs


def _say(message: str) -> None:
    from dermmobile.display import printable

    print(f"bench: {printable(message)}", file=sys.stderr, flush=True)


def collect_subjects(config: BenchConfig) -> tuple[list[Subject], dict | None]:
    """Reference first, then the artifacts in name order; (subjects, checkpoint data record)."""
    subjects, data_record = _checkpoint_subjects(config) if config.checkpoint is not None else ([], None)
    if config.artifacts is not None:
        subjects += _artifact_subjects(Path(config.artifacts))
    if config.checkpoint is None:
        # No PyTorch model given: the first fp32 artifact is the reference; its own gate at export
        # time tied it to PyTorch within 1e-3, and the report says which artifact stood in.
        fp32 = [s for s in subjects if s.error is None and s.quantization == "none"]
        if not fp32:
            refused = [s.error for s in subjects if s.error]
            raise BadInputError(
                "without --checkpoint one artifact must be fp32 (quantization none) to serve as the reference"
                + (f"; {len(refused)} artifact(s) were refused, the first: {refused[0]}" if refused else "")
            )
        fp32[0].role = "reference"
    return subjects, data_record


def _checkpoint_subjects(config: BenchConfig) -> tuple[list[Subject], dict | None]:
    """The checkpoint's eager model (the reference) and, unless --no-compile, its torch.compile twin."""
    from dermmobile.checkpoint import read_meta
    from dermmobile.fsutil import sha256_file

    checkpoint = Path(config.checkpoint)
    meta = read_meta(checkpoint)
    common = dict(
        kind="checkpoint",
        path=checkpoint,
        format="pytorch",
        quantization="none",
        labels=list(meta.labels),
        preprocess=dict(meta.preprocess),
        file_bytes=checkpoint.stat().st_size,
        sha256=sha256_file(checkpoint),
    )
    subjects = [Subject(REFERENCE, role="reference", **common)]
    if config.compile:
        subjects.append(Subject(COMPILED, role="compiled", **common))
    return subjects, meta.data or None


def _artifact_subjects(folder: Path) -> list[Subject]:
    """One subject per manifest in the folder; a manifest that cannot be read or verified becomes an error subject."""
    from dermmobile.artifact import find_artifacts, load_artifact

    manifests = find_artifacts(folder)
    if not manifests:
        raise BadInputError(f"{folder} holds no artifact manifests; run `dermmobile export` first")
    subjects = []
    for manifest_file in manifests:
        name = manifest_file.name.removesuffix(".json")
        try:
            m = load_artifact(manifest_file).manifest
        except DermmobileError as exc:
            refused = isinstance(exc, BadInputError)
            subjects.append(
                Subject(name, "artifact", manifest_file, "unknown", "none", [], {}, error=str(exc), bad_input=refused)
            )
            continue
        flops = (m.notes or {}).get("flops")
        subjects.append(
            Subject(name, "artifact", manifest_file, m.format, m.quantization, list(m.labels), dict(m.preprocess),
                    file_bytes=m.bytes, sha256=m.sha256, flops=int(flops) if flops else None,
                    float_layers=m.float_layers, float_macs_share=m.float_macs_share)
        )  # fmt: skip
    return subjects


def select_samples(data: Path, labels: list[str], data_record: dict | None, split: str):
    """(ImageFolder, samples, description): the checkpoint's held-out images (data.held_out), or every image."""
    from dermmobile.data import held_out, scan_image_folder

    folder = scan_image_folder(Path(data), expected_classes=labels)
    # The bench's "test" means: the held-out files where --data is the training root, else every image.
    chosen = held_out(folder, data_record, "auto" if split == "test" else "all")
    return folder, chosen.samples, {"root": str(data), **chosen.info()}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    memory_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:  # not Linux: platform's answer stands
        pass
    try:  # other work on the machine while timing is the first suspect for noisy numbers
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {
        "cpu": cpu,
        "load_average_1_5_15min": load,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    from dermmobile import __version__
    from dermmobile.targets.base import package_version

    packages = ["numpy", "pillow", "torch", "torchvision", "onnxruntime", "ai-edge-litert", "executorch", "coremltools"]
    return {"dermmobile": __version__, **{name: package_version(name) for name in packages}}


class Runner:
    """Runs jobs in a subprocess each (isolate) or in this process."""

    def __init__(self, workdir: Path, isolate: bool, timeout_s: float):
        self.workdir = workdir
        self.isolate = isolate
        self.timeout_s = timeout_s
        self.count = 0

    def __call__(self, job: Job) -> JobResult:
        if not self.isolate:
            return run_job(job)
        self.count += 1
        job_file = self.workdir / f"job-{self.count}.json"
        result_file = self.workdir / f"result-{self.count}.json"
        job_file.write_text(json.dumps(job.to_dict()), encoding="utf-8")
        env = dict(os.environ, **{name: str(job.threads) for name in THREAD_ENV})
        command = [sys.executable, "-m", "dermmobile.bench.worker", str(job_file), str(result_file)]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return JobResult.failed(job.threads, f"timed out after {self.timeout_s:g} s")
        if not result_file.is_file():
            tail = " ".join((done.stderr or "").split())[-600:]
            return JobResult.failed(job.threads, f"worker exited with code {done.returncode} and no result: {tail}")
        result = read_job_result(result_file)
        result.isolated = True
        return result


def run_bench(config: BenchConfig, log: Callable[[str], None] = _say) -> dict:
    """Measure everything the config names and return the report (see README.md for its schema)."""
    config.check()
    subjects, data_record = collect_subjects(config)
    reference = next(s for s in subjects if s.role == "reference")
    folder, samples, data_info = select_samples(config.data, reference.labels, data_record, config.split)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dermmobile-bench-") as tmp:
        workdir = Path(tmp)
        runner = Runner(workdir, config.isolate, config.timeout_s)
        images = _ImageCache(workdir, samples, folder.root, reference.labels)
        ref_set = images.get(reference.preprocess)
        if len(ref_set) == 0:
            raise BadInputError(f"no image under {config.data} could be decoded: {ref_set.bad[:3]}")
        data_info.update(ref_set.describe())
        gemm = {threads: _gemm_peak(runner, threads, config.gemm_size, log) for threads in config.threads}
        e2e = _end_to_end_inputs(config, samples, folder.root, ref_set, workdir)
        if e2e.phone_photo_info:
            data_info["phone_photo"] = e2e.phone_photo_info
        measured = [Measured(s, _measure(s, config, runner, images, ref_set, e2e, log)) for s in subjects]
        report = build_report(config, measured, ref_set, gemm, data_info, machine_info(), versions())
    report["seconds"] = round(time.time() - started, 1)
    return report


def _gemm_peak(runner: Runner, threads: int, size: int, log: Callable[[str], None]) -> GemmPeak | None:
    result = runner(Job("gemm", threads, gemm_size=size))
    if result.gemm is None:
        log(f"fp32 GEMM peak at {threads} thread(s) not measured: {result.error}")
        return None
    log(f"fp32 GEMM peak at {threads} thread(s): {result.gemm.gflops:.1f} GFLOP/s ({result.gemm.library})")
    return result.gemm


@dataclass
class _EndToEndInputs:
    """The photo files every job times end to end, and the 12 MP phone photo made for the sweep."""

    files: list[str]
    phone_photo: str = ""
    phone_photo_info: dict | None = None


def _end_to_end_inputs(config: BenchConfig, samples, root: Path, ref_set: ImageSet, workdir: Path) -> _EndToEndInputs:
    decodable = set(ref_set.names)
    files = [str(s.path) for s in samples if s.path.relative_to(root).as_posix() in decodable][: config.e2e_images]
    if not (config.phone_runs and files):
        return _EndToEndInputs(files)
    from dermmobile.bench.phone_photo import PHONE_SIZE, make_phone_photo

    # A phone-sized JPEG made from the first test photo, in the sweep's temporary folder: never kept.
    photo = make_phone_photo(Path(files[0]), workdir / "phone-12mp.jpg")
    info = {"size": list(PHONE_SIZE), "source": Path(files[0]).name, "bytes": photo.stat().st_size, "runs": config.phone_runs}
    return _EndToEndInputs(files, str(photo), info)


def _measure(
    subject: Subject,
    config: BenchConfig,
    runner: Runner,
    images: _ImageCache,
    ref_set: ImageSet,
    e2e: _EndToEndInputs,
    log: Callable[[str], None],
) -> dict[int, JobResult]:
    """One job per thread count; the first also runs parity. A subject that cannot run gets error results."""
    results: dict[int, JobResult] = {}
    for index, threads in enumerate(config.threads):
        try:
            image_set = _images_for(subject, images, ref_set)
        except DermmobileError as exc:  # a refused file or manifest is bad input (exit 2), not a failed measurement
            results[threads] = JobResult.failed(threads, str(exc), bad_input=isinstance(exc, BadInputError))
            continue
        job = Job(
            subject.kind,
            threads,
            path=str(subject.path),
            compile=subject.role == "compiled",
            warmup=config.warmup,
            iters=config.iters,
            images=str(image_set.file),
            parity=index == 0,
            e2e_files=e2e.files,
            phone_photo=e2e.phone_photo,
            phone_runs=config.phone_runs,
            spec=subject.preprocess,
            count_flops=subject.role == "reference" and subject.kind == "checkpoint" and index == 0,
        )
        result = results[threads] = runner(job)
        p50 = f", p50 {result.p50:.2f} ms" if result.p50 is not None else ""
        log(f"{subject.name} @ {threads} thread(s): {result.status}{p50}" + (f" ({result.error})" if result.error else ""))
    return results


def _images_for(subject: Subject, images: _ImageCache, ref_set: ImageSet) -> ImageSet:
    """The subject's preprocessed test images, refused unless they are the reference's images in its order."""
    if subject.error is not None:
        raise (BadInputError if subject.bad_input else DermmobileError)(subject.error)
    if subject.labels != ref_set.labels:
        from dermmobile.data import check_same_classes

        check_same_classes(ref_set.labels, subject.labels, "the reference's labels", subject.name)
    image_set = images.get(subject.preprocess)
    if image_set.names != ref_set.names:  # parity compares row i with row i
        raise BadInputError(f"{subject.name}: its preprocessing decoded a different set of images")
    return image_set


@dataclass
class ImageSet:
    """Preprocessed test images saved as one .npy file for the workers to map, with their names and classes."""

    file: Path
    names: list[str]
    targets: np.ndarray
    bad: list
    labels: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> dict:
        """The report's `data` fields that depend on which images decoded."""
        from dermmobile.data import files_digest

        return {
            "images": len(self),
            "classes": self.labels,
            "per_class": {label: int((self.targets == i).sum()) for i, label in enumerate(self.labels)},
            "bad_files": [{"file": f, "reason": r} for f, r in self.bad],
            "files_sha256": files_digest(self.names),
        }


class _ImageCache:
    """Preprocessed test images saved once per distinct preprocessing spec."""

    def __init__(self, workdir: Path, samples, root: Path, labels: list[str]):
        self.workdir, self.samples, self.root, self.labels = workdir, samples, root, labels
        self.sets: dict[str, ImageSet] = {}

    def get(self, preprocess: dict) -> ImageSet:
        key = json.dumps(preprocess, sort_keys=True)
        if key not in self.sets:
            from dermmobile.data import load_images
            from dermmobile.preprocess import PreprocessSpec

            loaded = load_images(self.samples, PreprocessSpec.from_dict(preprocess), self.root, progress="preprocess")
            file = self.workdir / f"images-{len(self.sets)}.npy"
            np.save(file, loaded.arrays)
            self.sets[key] = ImageSet(file, loaded.names, loaded.targets, loaded.bad, self.labels)
        return self.sets[key]
