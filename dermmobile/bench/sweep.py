"""The bench sweep: every artifact (and the PyTorch reference) x every thread count, one report.

It picks the images (the checkpoint's held-out test files when --data is its training
root), preprocesses them once per preprocessing spec, measures the machine's fp32 GEMM
peak, runs one worker job per subject and thread count, then compares each artifact's
logits with the reference's. A job that fails becomes a row with its error; the sweep
goes on. The report it returns is the JSON documented in dermmobile/bench/README.md.

This module never imports torch: jobs that need it import it in their own process.
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

from dermmobile.bench.accuracy import accuracy_parity
from dermmobile.bench.latency import THREAD_ENV, gflops_per_second
from dermmobile.bench.worker import Job, run_job
from dermmobile.errors import BadInputError, DermmobileError
from dermmobile.parity import TOLERANCES

SCHEMA = "dermmobile-bench"
SCHEMA_VERSION = 1
REFERENCE = "pytorch-eager"
COMPILED = "pytorch-compile"


@dataclass
class BenchConfig:
    data: Path
    artifacts: Path | None = None
    checkpoint: Path | None = None
    threads: list[int] = field(default_factory=lambda: [os.cpu_count() or 1])
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
    subjects: list[Subject] = []
    data_record = None
    if config.checkpoint is not None:
        from dermmobile.checkpoint import read_meta
        from dermmobile.fsutil import sha256_file

        meta = read_meta(Path(config.checkpoint))
        data_record = meta.data or None
        common = dict(
            kind="checkpoint",
            path=Path(config.checkpoint),
            format="pytorch",
            quantization="none",
            labels=list(meta.labels),
            preprocess=dict(meta.preprocess),
            file_bytes=Path(config.checkpoint).stat().st_size,
            sha256=sha256_file(Path(config.checkpoint)),
        )
        subjects.append(Subject(REFERENCE, role="reference", **common))
        if config.compile:
            subjects.append(Subject(COMPILED, role="compiled", **common))
    if config.artifacts is not None:
        from dermmobile.artifact import find_artifacts, load_artifact

        manifests = find_artifacts(Path(config.artifacts))
        if not manifests:
            raise BadInputError(f"{config.artifacts} holds no artifact manifests; run `dermmobile export` first")
        for manifest_file in manifests:
            name = manifest_file.name.removesuffix(".json")
            try:
                artifact = load_artifact(manifest_file)
            except DermmobileError as exc:
                refused = isinstance(exc, BadInputError)
                subjects.append(
                    Subject(name, "artifact", manifest_file, "unknown", "none", [], {}, error=str(exc), bad_input=refused)
                )
                continue
            m = artifact.manifest
            flops = (m.notes or {}).get("flops")
            subjects.append(
                Subject(
                    name,
                    "artifact",
                    manifest_file,
                    m.format,
                    m.quantization,
                    list(m.labels),
                    dict(m.preprocess),
                    file_bytes=m.bytes,
                    sha256=m.sha256,
                    flops=int(flops) if flops else None,
                    float_layers=m.float_layers,
                    float_macs_share=m.float_macs_share,
                )
            )
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

    def __call__(self, job: Job) -> dict:
        if not self.isolate:
            result = run_job(job)
            result["isolated"] = False
            return result
        self.count += 1
        job_file = self.workdir / f"job-{self.count}.json"
        result_file = self.workdir / f"result-{self.count}.json"
        job_file.write_text(json.dumps(job.to_dict()), encoding="utf-8")
        env = dict(os.environ, **{name: str(job.threads) for name in THREAD_ENV})
        command = [sys.executable, "-m", "dermmobile.bench.worker", str(job_file), str(result_file)]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"timed out after {self.timeout_s:g} s", "threads": job.threads}
        if not result_file.is_file():
            tail = " ".join((done.stderr or "").split())[-600:]
            return {
                "status": "error",
                "error": f"worker exited with code {done.returncode} and no result: {tail}",
                "threads": job.threads,
            }
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result["isolated"] = True
        return result


def run_bench(config: BenchConfig, log: Callable[[str], None] = _say) -> dict:
    """Measure everything the config names and return the report (see README.md for its schema)."""
    config.check()
    subjects, data_record = collect_subjects(config)
    reference = next(s for s in subjects if s.role == "reference")
    folder, samples, data_info = select_samples(config.data, reference.labels, data_record, config.split)
    labels = reference.labels
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dermmobile-bench-") as tmp:
        workdir = Path(tmp)
        runner = Runner(workdir, config.isolate, config.timeout_s)
        images = _ImageCache(workdir, samples, folder.root)
        ref_set = images.get(reference.preprocess)
        if len(ref_set) == 0:
            raise BadInputError(f"no image under {config.data} could be decoded: {ref_set.bad[:3]}")
        data_info.update(
            images=len(ref_set),
            classes=labels,
            per_class={label: int((ref_set.targets == i).sum()) for i, label in enumerate(labels)},
            bad_files=[{"file": f, "reason": r} for f, r in ref_set.bad],
            files_sha256=_digest(ref_set.names),
        )
        gemm = {}
        for threads in config.threads:
            result = runner(Job("gemm", threads, gemm_size=config.gemm_size))
            gemm[threads] = result.get("gemm_gflops")
            log(f"fp32 GEMM peak at {threads} thread(s): {_fmt(gemm[threads], '.1f')} GFLOP/s")
        decodable = set(ref_set.names)
        e2e_files = [str(s.path) for s in samples if s.path.relative_to(folder.root).as_posix() in decodable]
        e2e_files = e2e_files[: config.e2e_images]
        phone_photo = ""
        if config.phone_runs and e2e_files:  # a phone-sized JPEG made from the first test photo, never kept
            from dermmobile.bench.phone_photo import PHONE_SIZE, make_phone_photo

            phone_photo = str(make_phone_photo(Path(e2e_files[0]), workdir / "phone-12mp.jpg"))
            data_info["phone_photo"] = {"size": list(PHONE_SIZE), "source": Path(e2e_files[0]).name,
                                        "bytes": Path(phone_photo).stat().st_size, "runs": config.phone_runs}  # fmt: skip

        results: dict[str, dict[int, dict]] = {}
        for subject in subjects:
            results[subject.name] = {}
            for index, threads in enumerate(config.threads):
                if subject.error is not None:
                    results[subject.name][threads] = {
                        "status": "error",
                        "error": subject.error,
                        "threads": threads,
                        "bad_input": subject.bad_input,
                    }
                    continue
                try:
                    if subject.labels != labels:
                        from dermmobile.data import check_same_classes

                        check_same_classes(labels, subject.labels, "the reference's labels", subject.name)
                    image_set = images.get(subject.preprocess)
                    if image_set.names != ref_set.names:  # parity compares row i with row i
                        raise BadInputError(f"{subject.name}: its preprocessing decoded a different set of images")
                except DermmobileError as exc:
                    refused = isinstance(exc, BadInputError)
                    results[subject.name][threads] = {
                        "status": "error",
                        "error": str(exc),
                        "threads": threads,
                        "bad_input": refused,
                    }
                    continue
                logits_out = str(workdir / f"logits-{len(results)}.npy") if index == 0 else ""
                job = Job(
                    subject.kind,
                    threads,
                    path=str(subject.path),
                    compile=subject.role == "compiled",
                    warmup=config.warmup,
                    iters=config.iters,
                    images=str(image_set.file),
                    logits_out=logits_out,
                    e2e_files=e2e_files,
                    phone_photo=phone_photo,
                    phone_runs=config.phone_runs,
                    spec=subject.preprocess,
                    count_flops=subject.role == "reference" and subject.kind == "checkpoint" and index == 0,
                )
                result = runner(job)
                if result.get("logits"):
                    result["logits_array"] = np.load(result["logits"])
                results[subject.name][threads] = result
                p50 = (result.get("latency_ms") or {}).get("p50")
                log(
                    f"{subject.name} @ {threads} thread(s): {result['status']}"
                    + (f", p50 {p50:.2f} ms" if p50 is not None else "")
                    + (f" ({result['error']})" if result.get("error") else "")
                )
        report = _assemble(config, subjects, results, ref_set, labels, gemm, data_info)
    report["seconds"] = round(time.time() - started, 1)
    return report


@dataclass
class _ImageSetFile:
    file: Path
    names: list[str]
    targets: np.ndarray
    bad: list

    def __len__(self) -> int:
        return len(self.names)


class _ImageCache:
    """Preprocessed test images saved once per distinct preprocessing spec, for the workers to map."""

    def __init__(self, workdir: Path, samples, root: Path):
        self.workdir, self.samples, self.root = workdir, samples, root
        self.sets: dict[str, _ImageSetFile] = {}

    def get(self, preprocess: dict) -> _ImageSetFile:
        key = json.dumps(preprocess, sort_keys=True)
        if key not in self.sets:
            from dermmobile.data import load_images
            from dermmobile.preprocess import PreprocessSpec

            loaded = load_images(self.samples, PreprocessSpec.from_dict(preprocess), self.root, progress="preprocess")
            file = self.workdir / f"images-{len(self.sets)}.npy"
            np.save(file, loaded.arrays)
            self.sets[key] = _ImageSetFile(file, loaded.names, loaded.targets, loaded.bad)
        return self.sets[key]


def _digest(names: list[str]) -> str:
    from dermmobile.data import files_digest

    return files_digest(names)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _assemble(config, subjects, results, ref_set, labels, gemm, data_info) -> dict:
    reference = next(s for s in subjects if s.role == "reference")
    first = config.threads[0]
    ref_result = results[reference.name][first]
    ref_logits = ref_result.get("logits_array")
    model_flops = ref_result.get("flops")
    machine = machine_info()
    artifacts, rows, problems, refused = [], [], [], []
    for subject in subjects:
        by_threads = results[subject.name]
        head = by_threads[first]
        entry = {
            "name": subject.name,
            "role": subject.role,
            "format": subject.format,
            "quantization": subject.quantization,
            "file": str(subject.path),
            "bytes": subject.file_bytes,
            "sha256": subject.sha256,
            "runtime": head.get("runtime"),
            "torch_imported": head.get("torch_imported"),
            "status": head["status"],
            "error": head.get("error"),
            "failures": [],
            "parity": None,
            "gate": TOLERANCES[subject.quantization].why if subject.quantization in TOLERANCES else None,
            "float_layers": subject.float_layers,
            "float_macs_share": subject.float_macs_share,
        }
        logits = head.get("logits_array")
        if head["status"] == "ok":
            if ref_logits is None:
                entry.update(status="error", error=f"no reference logits to compare with ({ref_result.get('error')})")
            elif logits is not None:
                result = accuracy_parity(
                    ref_logits, logits, ref_set.targets, labels, ref_set.names, subject.quantization, subject.name
                )
                entry["parity"] = result.to_dict(labels)
                entry["failures"] = result.parity.failures
                entry["status"] = "passed" if result.parity.passed else "failed"
        if subject.role == "reference":
            entry["status"] = "reference" if head["status"] == "ok" else head["status"]
        counted = subject.role != "compiled"  # torch.compile is information, not a shipped artifact
        if counted and entry["status"] == "error":
            problems.append(f"{subject.name}: not checked: {entry['error']}")
            if any(result.get("bad_input") for result in by_threads.values()):
                refused.append(subject.name)
        if counted:
            problems.extend(entry["failures"])
        artifacts.append(entry)
        flops = model_flops or subject.flops
        for threads, result in by_threads.items():
            p50 = (result.get("latency_ms") or {}).get("p50")
            speed = gflops_per_second(flops, p50)
            if counted and threads != first and result["status"] == "error":
                problems.append(f"{subject.name} @ {threads} threads: {result['error']}")
            rows.append(
                {
                    "source": "host",
                    "device": machine["cpu"],
                    "artifact": subject.name,
                    "format": subject.format,
                    "quantization": subject.quantization,
                    "threads": threads,
                    "status": result["status"],
                    "error": result.get("error"),
                    "cold_load_ms": result.get("cold_load_ms"),
                    "load_ms": result.get("load_ms"),
                    "first_inference_ms": result.get("first_inference_ms"),
                    "latency_ms": result.get("latency_ms"),
                    "iterations": result.get("iterations"),
                    "warmup": result.get("warmup"),
                    "end_to_end_ms": result.get("end_to_end_ms"),
                    "end_to_end": result.get("end_to_end"),
                    "e2e_images": (result.get("end_to_end_ms") or {}).get("n"),
                    "file_bytes": subject.file_bytes,
                    "peak_rss_mb": result.get("peak_rss_mb"),
                    "rss_before_load_mb": result.get("rss_before_load_mb"),
                    "peak_rss_scope": "process per job" if result.get("isolated") else "whole bench process",
                    "flops": flops,
                    "gflops_per_s": speed,
                    "gemm_peak_gflops": gemm.get(threads),
                    "peak_fraction": speed / gemm[threads] if speed and gemm.get(threads) else None,
                    "torch_imported": result.get("torch_imported"),
                }
            )
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "versions": versions(),
        "settings": {
            "threads": config.threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "batch": 1,
            "isolated": config.isolate,
            "gemm_size": config.gemm_size,
        },
        "gemm_peak_gflops": {str(t): v for t, v in gemm.items()},
        "data": data_info,
        "reference": {
            "name": reference.name,
            "kind": reference.kind,
            "note": "the checkpoint's eager PyTorch model"
            if reference.kind == "checkpoint"
            else "no --checkpoint: parity is against this fp32 artifact, itself gated against PyTorch at export",
            "flops": model_flops,
        },
        "artifacts": artifacts,
        "rows": rows,
        "problems": problems,
        "refused": refused,
    }
