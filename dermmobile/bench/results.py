"""What one bench job measured, typed: the worker fills a JobResult, the sweep reads it.

A job that runs in its own process hands its result back as JSON (`to_json`) with the
logits beside it as a `.npy` file; `read_job_result` turns both back into a JobResult with
the logits loaded, so the rest of the bench never sees a path or a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from dermmobile.bench.latency import EndToEnd, GemmPeak, LatencyStats


@dataclass
class JobResult:
    """One job: an artifact or reference at one thread count, or the GEMM peak at one thread count."""

    threads: int
    status: str = "ok"  # ok | error | not-run
    error: str | None = None
    bad_input: bool = False  # the error is a refused file (exit 2), not a measurement failure
    traceback: str | None = None
    runtime: str | None = None  # the Runtime's name
    torch_imported: bool | None = None
    isolated: bool = False  # ran in a process of its own (peak RSS is then this job's alone)
    rss_before_load_mb: float | None = None
    cold_load_ms: float | None = None  # first load, including the runtime library's import
    load_ms: float | None = None
    first_inference_ms: float | None = None
    latency: LatencyStats | None = None  # warm single-image predict calls
    iterations: int | None = None
    warmup: int | None = None
    end_to_end: dict[str, EndToEnd] = field(default_factory=dict)  # images (data-set photos), phone_12mp
    peak_rss_mb: float | None = None
    flops: int | None = None  # of one forward pass (the checkpoint reference counts them)
    gemm: GemmPeak | None = None  # GEMM jobs only
    logits: np.ndarray | None = None  # N x classes over the test set (parity jobs only)

    @classmethod
    def failed(cls, threads: int, error: str, status: str = "error", bad_input: bool = False) -> JobResult:
        return cls(threads, status=status, error=error, bad_input=bad_input)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def p50(self) -> float | None:
        return self.latency.p50 if self.latency else None

    def end_to_end_dict(self) -> dict:
        """`end_to_end` of a report row: each source with its steps and the total over the inference p50."""
        return {source: e2e.to_dict(self.p50) for source, e2e in self.end_to_end.items()}

    def to_json(self) -> dict:
        """Everything but the logits, as plain JSON (a worker process writes this)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("logits", "latency", "end_to_end", "gemm")}
        out["latency"] = asdict(self.latency) if self.latency else None
        out["end_to_end"] = {source: asdict(e2e) for source, e2e in self.end_to_end.items()}
        out["gemm"] = asdict(self.gemm) if self.gemm else None
        return out

    @classmethod
    def from_json(cls, data: dict, logits: np.ndarray | None = None) -> JobResult:
        plain = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in ("latency", "end_to_end", "gemm")}
        result = cls(**plain)
        result.latency = LatencyStats(**data["latency"]) if data.get("latency") else None
        result.end_to_end = {source: _end_to_end(e2e) for source, e2e in (data.get("end_to_end") or {}).items()}
        result.gemm = GemmPeak(**data["gemm"]) if data.get("gemm") else None
        result.logits = logits
        return result


def _end_to_end(data: dict) -> EndToEnd:
    steps = {step: LatencyStats(**data[step]) for step in ("decode", "preprocess", "inference", "total")}
    return EndToEnd(files=data["files"], **steps)


def write_job_result(result: JobResult, path: Path) -> None:
    """A worker's hand-back: RESULT.json, and RESULT.npy with the logits when there are any."""
    from dermmobile.fsutil import atomic_write_json

    if result.logits is not None:
        np.save(logits_file(path), result.logits, allow_pickle=False)
    atomic_write_json(path, result.to_json())  # written last: its presence means the job finished


def read_job_result(path: Path) -> JobResult:
    import json

    logits = logits_file(path)
    loaded = np.load(logits, allow_pickle=False) if logits.is_file() else None
    return JobResult.from_json(json.loads(Path(path).read_text(encoding="utf-8")), loaded)


def logits_file(result_file: Path) -> Path:
    return Path(result_file).with_suffix(".npy")
