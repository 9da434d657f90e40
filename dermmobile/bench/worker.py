"""One measurement job: load a Runtime, time it, run it over the test images, report a JobResult.

The sweep runs every job in a fresh `python -m dermmobile.bench.worker JOB.json RESULT.json`:
- peak RSS (`ru_maxrss`) only ever grows within a process, so only a process of its own
  gives one artifact's peak memory;
- thread caps (OMP_NUM_THREADS, ...) are read when a runtime starts its pool, so they are
  set in the child's environment before anything is imported;
- a runtime that crashes the interpreter costs its row, not the sweep.
The same `run_job` runs in-process when isolation is off (tests, `--in-process`); peak RSS
is then the whole process's and reported as such.

Order inside a job: a cold load (imports the runtime library), a load (timed as load_ms),
first inference, warm-up, timed single-image calls, end-to-end per data-set file (decode,
preprocess and inference timed apart), peak RSS, end-to-end on the 12 MP phone photo, and
only then parity over the whole test set, so neither the big photo nor the images paged in
for parity count towards the runtime's memory.

Torch is imported only by jobs that need it (the checkpoint reference, torch-based targets,
and the GEMM peak, which measures torch's GEMM beside numpy's where torch is installed):
`torch_imported` in the result says whether it was.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dermmobile.bench.latency import end_to_end, gemm_peak, peak_rss_mb, summarize, time_calls, timed
from dermmobile.bench.results import JobResult, write_job_result
from dermmobile.errors import BadInputError, MissingBackendError


@dataclass
class Job:
    kind: str  # "artifact" | "checkpoint" | "gemm"
    threads: int
    path: str = ""  # artifact (or its manifest) or checkpoint
    compile: bool = False  # checkpoint only: wrap the model in torch.compile
    warmup: int = 10
    iters: int = 100
    images: str = ""  # .npy of float32 N x 3 x H x W preprocessed test images; image 0 is timed
    parity: bool = False  # also run every test image and return the logits
    e2e_files: list[str] = field(default_factory=list)
    phone_photo: str = ""  # a 12 MP JPEG, timed end to end `phone_runs` times ("" skips it)
    phone_runs: int = 0
    spec: dict = field(default_factory=dict)  # PreprocessSpec for end-to-end timing
    count_flops: bool = False  # checkpoint only: FLOPs of one forward pass
    gemm_size: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)


def loader(job: Job):
    """(load callable returning a Runtime, check callable for a loaded Runtime, holder of the model for FLOP counting).

    Artifacts go through dermmobile.runtime: a risky format is first probed in a child process,
    the loads are timed as they are, and the first loaded runtime gets the one-inference check,
    so a damaged file is refused as in every other command.
    """
    if job.kind == "checkpoint":
        from dermmobile.checkpoint import load_checkpoint
        from dermmobile.targets.base import TorchRuntime

        holder: dict = {}

        def load():
            model = load_checkpoint(Path(job.path)).model
            holder["model"] = model
            if job.compile:
                import torch

                model = torch.compile(model)  # lazy: compiling happens in the first inference
            return TorchRuntime(model, job.threads)

        return load, (lambda runtime: None), holder
    from dermmobile.artifact import load_artifact
    from dermmobile.runtime import load_runtime, probe_if_risky, smoke_test

    artifact = load_artifact(Path(job.path))  # sha256 checked here, outside the timed load
    probe_if_risky(artifact, job.threads)
    return (lambda: load_runtime(artifact, job.threads)), (lambda runtime: smoke_test(runtime, artifact)), {}


def _spec(job: Job):
    from dermmobile.preprocess import PreprocessSpec

    return PreprocessSpec.from_dict(job.spec)


def _logits(runtime, batch: np.ndarray) -> np.ndarray:
    out = np.asarray(runtime.predict(batch))
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise BadInputError(f"runtime returned shape {out.shape} for {len(batch)} image(s); expected (N, classes) logits")
    return out.astype(np.float32, copy=False)


@dataclass
class _Stage:
    """The step a job is in, so an error names where it happened."""

    name: str = "setup"


def run_job(job: Job) -> JobResult:
    """Measure one job; never raises: failures come back as status "error" or "not-run"."""
    result = JobResult(job.threads)
    stage = _Stage()
    try:
        if job.kind == "gemm":
            stage.name = "gemm"
            result.gemm = gemm_peak(job.gemm_size, job.threads)
        else:
            _measure(job, result, stage)
    except MissingBackendError as exc:
        result.status, result.error = "not-run", f"not run: {exc}"
    except BadInputError as exc:  # a damaged artifact or manifest: the command's exit code says "bad input"
        result.status, result.error, result.bad_input = "error", f"{stage.name}: {exc}", True
    except Exception as exc:  # any runtime failure becomes this row's error; the sweep goes on
        result.status = "error"
        result.error = f"{stage.name}: {type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
        result.traceback = traceback.format_exc(limit=8)[-4000:]
    finally:
        result.torch_imported = "torch" in sys.modules
    return result


def _measure(job: Job, result: JobResult, stage: _Stage) -> None:
    """The job's steps in their order (module docstring), each recorded in `result` as it completes."""
    images = np.load(job.images, mmap_mode="r")
    sample = np.ascontiguousarray(images[:1], dtype=np.float32)
    result.rss_before_load_mb = peak_rss_mb()
    stage.name = "load"
    load, check, holder = loader(job)
    # The first load also imports the runtime's library; the second is what loading a model costs.
    first, result.cold_load_ms = timed(load)
    check(first)  # a damaged file is refused here, as in every other command
    del first  # one model in memory while timing and for peak RSS, as in an app
    runtime, result.load_ms = timed(load)
    result.runtime = getattr(runtime, "name", type(runtime).__name__)
    stage.name = "first inference"
    _, result.first_inference_ms = timed(lambda: _logits(runtime, sample))
    stage.name = "warm-up"
    time_calls(lambda: runtime.predict(sample), job.warmup)
    stage.name = "latency"
    result.latency = summarize(time_calls(lambda: runtime.predict(sample), job.iters))
    result.iterations, result.warmup = job.iters, job.warmup
    if job.e2e_files:
        stage.name = "end-to-end"
        result.end_to_end["images"] = end_to_end(runtime.predict, [Path(p) for p in job.e2e_files], _spec(job))
    result.peak_rss_mb = peak_rss_mb()
    if job.phone_photo and job.phone_runs:  # after the peak: decoding a 12 MP photo is not the runtime's memory
        stage.name = "end-to-end (12 MP photo)"
        result.end_to_end["phone_12mp"] = end_to_end(runtime.predict, [Path(job.phone_photo)] * job.phone_runs, _spec(job))
    if job.count_flops and holder.get("model") is not None:
        stage.name = "flop count"
        from dermmobile.bench.latency import count_flops

        result.flops = count_flops(holder["model"], list(sample.shape))
    if job.parity:
        stage.name = "parity"
        result.logits = np.concatenate([_logits(runtime, np.ascontiguousarray(images[i : i + 1])) for i in range(len(images))])


def main(argv: list[str] | None = None) -> int:
    job_file, result_file = (argv or sys.argv[1:])[:2]
    job = Job(**json.loads(Path(job_file).read_text(encoding="utf-8")))
    write_job_result(run_job(job), Path(result_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
