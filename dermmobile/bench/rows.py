"""The report's records, built from typed job results: one artifact entry per subject, one row per thread count.

`build_report` returns the JSON documented in README.md beside this file. Each builder takes
a Subject (what was measured) and its JobResults (how it went) and returns one plain dict.
A latency row is a `dermmobile.bench.schema.BenchRow`, the one row schema the phones and the
browser write too: `host_row` validates what it builds against it, so a host row the apps'
JSON Schema would refuse fails here, in the tests, not in someone's `--merge`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dermmobile.bench.accuracy import accuracy_parity
from dermmobile.bench.latency import GemmPeak, gflops_per_second
from dermmobile.bench.results import JobResult
from dermmobile.bench.schema import SCHEMA, SCHEMA_VERSION, BenchRow
from dermmobile.parity import TOLERANCES

if TYPE_CHECKING:
    from dermmobile.bench.sweep import BenchConfig, ImageSet, Subject


@dataclass
class Measured:
    """One subject and its job results by thread count; the first thread count's job also ran parity."""

    subject: Subject
    by_threads: dict[int, JobResult]

    @property
    def head(self) -> JobResult:
        return next(iter(self.by_threads.values()))

    @property
    def counted(self) -> bool:
        """torch.compile is information, not a shipped artifact: its failures do not fail the command."""
        return self.subject.role != "compiled"


def artifact_entry(measured: Measured, reference: JobResult, images: ImageSet, labels: list[str]) -> dict:
    """`artifacts[]`: what the subject is, and its parity against the reference's logits."""
    subject, head = measured.subject, measured.head
    entry = {
        "name": subject.name,
        "role": subject.role,
        "format": subject.format,
        "quantization": subject.quantization,
        "file": str(subject.path),
        "bytes": subject.file_bytes,
        "sha256": subject.sha256,
        "runtime": head.runtime,
        "torch_imported": head.torch_imported,
        "status": head.status,
        "error": head.error,
        "failures": [],
        "parity": None,
        "gate": TOLERANCES[subject.quantization].why if subject.quantization in TOLERANCES else None,
        "float_layers": subject.float_layers,  # int8: layers the accuracy-aware fallback left in float
        "float_macs_share": subject.float_macs_share,
    }
    if head.ok and reference.logits is None:
        entry.update(status="error", error=f"no reference logits to compare with ({reference.error})")
    elif head.ok and head.logits is not None:
        result = accuracy_parity(
            reference.logits, head.logits, images.targets, labels, images.names, subject.quantization, subject.name
        )
        entry.update(
            parity=result.to_dict(labels),
            failures=result.parity.failures,
            status="passed" if result.parity.passed else "failed",
        )
    if subject.role == "reference":
        entry["status"] = "reference" if head.ok else head.status
    return entry


def problems_of(measured: Measured, entry: dict) -> list[str]:
    """What makes the command fail for this subject: it could not be checked, a gate failed, a thread count broke."""
    if not measured.counted:
        return []
    problems = [f"{entry['name']}: not checked: {entry['error']}"] if entry["status"] == "error" else []
    problems += entry["failures"]
    first = next(iter(measured.by_threads))
    problems += [
        f"{entry['name']} @ {threads} threads: {result.error}"
        for threads, result in measured.by_threads.items()
        if threads != first and result.status == "error"
    ]
    return problems


def refused(measured: Measured, entry: dict) -> bool:
    """A counted subject that errored because its file or manifest was refused: the command exits 2 (bad input)."""
    return measured.counted and entry["status"] == "error" and any(r.bad_input for r in measured.by_threads.values())


def host_row(subject: Subject, result: JobResult, device: str, flops: int | None, gemm: GemmPeak | None) -> dict:
    """`rows[]`: one latency row of this machine, checked against BenchRow (keys given, None included, are kept)."""
    speed = gflops_per_second(flops, result.p50)
    peak = gemm.gflops if gemm else None
    e2e = result.end_to_end.get("images")
    row = {
        "source": "host",
        "device": device,
        "artifact": subject.name,
        "format": subject.format,
        "quantization": subject.quantization,
        "threads": result.threads,
        "status": result.status,
        "error": result.error[:4000] if result.error else None,
        "cold_load_ms": result.cold_load_ms,
        "load_ms": result.load_ms,
        "first_inference_ms": result.first_inference_ms,
        "latency_ms": result.latency.to_dict() if result.latency else None,
        "iterations": result.iterations,
        "warmup": result.warmup,
        "end_to_end_ms": e2e.total.to_dict() if e2e else None,
        "end_to_end": result.end_to_end_dict(),
        "e2e_images": e2e.files if e2e else None,
        "file_bytes": subject.file_bytes,
        "peak_rss_mb": result.peak_rss_mb,
        "rss_before_load_mb": result.rss_before_load_mb,
        "peak_rss_scope": "process per job" if result.isolated else "whole bench process",
        "flops": flops,
        "gflops_per_s": speed,
        "gemm_peak_gflops": peak,
        "peak_fraction": speed / peak if speed and peak else None,
        "torch_imported": result.torch_imported,
    }
    return BenchRow.model_validate(row).model_dump(exclude_unset=True)


def build_report(
    config: BenchConfig,
    measured: list[Measured],
    images: ImageSet,
    gemm: dict[int, GemmPeak | None],
    data_info: dict,
    machine: dict,
    versions: dict,
) -> dict:
    """The bench report (README.md): header, artifacts, rows and the problems that fail the command."""
    reference = next(m for m in measured if m.subject.role == "reference")
    model_flops = reference.head.flops
    labels = data_info["classes"]
    artifacts, rows, problems, refused_names = [], [], [], []
    for m in measured:
        entry = artifact_entry(m, reference.head, images, labels)
        artifacts.append(entry)
        problems += problems_of(m, entry)
        refused_names += [entry["name"]] if refused(m, entry) else []
        flops = model_flops or m.subject.flops
        rows += [host_row(m.subject, r, machine["cpu"], flops, gemm.get(t)) for t, r in m.by_threads.items()]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "versions": versions,
        "settings": {
            "threads": config.threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "batch": 1,
            "isolated": config.isolate,
            "gemm_size": config.gemm_size,
        },
        "gemm_peak_gflops": {str(t): g.gflops if g else None for t, g in gemm.items()},
        "gemm_peak_library": {str(t): g.library if g else None for t, g in gemm.items()},
        "gemm_candidates_gflops": {str(t): g.candidates if g else None for t, g in gemm.items()},
        "data": data_info,
        "reference": {
            "name": reference.subject.name,
            "kind": reference.subject.kind,
            "note": "the checkpoint's eager PyTorch model"
            if reference.subject.kind == "checkpoint"
            else "no --checkpoint: parity is against this fp32 artifact, itself gated against PyTorch at export",
            "flops": model_flops,
        },
        "artifacts": artifacts,
        "rows": rows,
        "problems": problems,
        "refused": refused_names,
    }
