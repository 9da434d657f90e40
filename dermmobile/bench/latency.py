"""Latency: how long a Runtime takes to load, to answer once, and to answer again and again.

Everything here sees only a Runtime (`predict(float32 NCHW) -> logits`) or a plain callable;
it never knows which format it is timing. Times are wall clock from `time.perf_counter_ns`
around each single-image call, so the harness adds one clock read per call and nothing else
(benchmarks/harness_overhead.py measures that claim).

Percentiles use numpy's default linear interpolation between order statistics
(p50 of 1..10 is 5.5, p90 is 9.1, p99 is 9.91); std is the population standard deviation
(ddof=0), the same definition the Android app's benchmark screen uses (dermmobile/android.py),
so host and phone rows in one table are comparable.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Read by OpenMP, OpenBLAS, MKL, Accelerate and numexpr when their pools start: the
# only portable way to cap a runtime we do not control, so the worker sets them first.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class LatencyStats:
    """Milliseconds over `n` calls."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms) -> LatencyStats:
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(values.mean()),
        std=float(values.std(ddof=0)),
        min=float(values.min()),
        max=float(values.max()),
        n=int(values.size),
    )


def time_calls(fn: Callable[[], object], iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls of `fn`."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(iters):
        start = clock()
        fn()
        out.append((clock() - start) / 1e6)
    return out


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, milliseconds) of one call."""
    start = time.perf_counter_ns()
    result = fn()
    return result, (time.perf_counter_ns() - start) / 1e6


@dataclass
class EndToEnd:
    """What a person waits for per photo, step by step: milliseconds over `files` files."""

    files: int
    decode: LatencyStats  # file -> upright RGB (spec.decode: reduced JPEG decode where the spec says)
    preprocess: LatencyStats  # RGB -> input tensor (spec.array)
    inference: LatencyStats  # one predict call on that tensor, inside the same loop
    total: LatencyStats  # the three together

    def to_dict(self, inference_p50: float | None = None) -> dict:
        """With `inference_p50` (the warm single-image p50), also the ratio the issue judges by."""
        steps = {f"{step}_ms": getattr(self, step).to_dict() for step in ("decode", "preprocess", "inference", "total")}
        ratio = self.total.p50 / inference_p50 if inference_p50 else None
        return {"files": self.files, **steps, "total_over_inference_p50": ratio}


def end_to_end(predict: Callable[[np.ndarray], np.ndarray], files: list[Path], spec) -> EndToEnd:
    """Time what an app does per photo: decode the file, preprocess with the one spec, predict."""
    steps: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "total": []}
    clock = time.perf_counter_ns
    for path in files:
        start = clock()
        rgb = spec.decode(Path(path))
        decoded = clock()
        array = spec.array(rgb)
        prepared = clock()
        predict(array[None])
        done = clock()
        for step, (a, b) in {"decode": (start, decoded), "preprocess": (decoded, prepared), "inference": (prepared, done),
                             "total": (start, done)}.items():  # fmt: skip
            steps[step].append((b - a) / 1e6)
    return EndToEnd(len(files), **{step: summarize(values) for step, values in steps.items()})


def gflops_per_second(flops: float | None, milliseconds: float | None) -> float | None:
    """Effective GFLOP/s of a model that needs `flops` per image and answers in `milliseconds`."""
    if not flops or not milliseconds:
        return None
    return flops / (milliseconds / 1e3) / 1e9


@dataclass
class GemmPeak:
    """The machine's fp32 matrix-multiply yardstick at one thread count: the fastest GEMM in the process."""

    gflops: float
    library: str  # which GEMM gave it, e.g. "torch 2.14.1 (mkl)" or "numpy 2.4.6 (openblas 0.3.31, SkylakeX)"
    candidates: dict[str, float]  # every GEMM measured, GFLOP/s


def gemm_peak(size: int = 2048, threads: int | None = None, repeats: int = 5) -> GemmPeak:
    """fp32 GEMM peak: numpy's BLAS, and torch's when torch is importable; the faster one is the peak.

    numpy's OpenBLAS is pinned to a conservative kernel on some machines (102-115 GFLOP/s where
    torch's reached 199 on the same CPU), and a yardstick below what the machine can do makes
    model GFLOP/s look closer to the peak than it is. The candidates take turns, repeat by
    repeat, so a burst of other work on the machine hits both alike. A size x size product is
    2 * size**3 FLOPs; best-of rather than mean: a peak is what the hardware does undisturbed.
    """
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    products = {_numpy_blas_name(): lambda: np.matmul(a, b)}
    torch = _torch_or_none()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        blas = "mkl" if torch.backends.mkl.is_available() else "blas"
        products[f"torch {torch.__version__.split('+')[0]} ({blas})"] = lambda: torch.mm(ta, tb)
    best = {name: math.inf for name in products}
    with thread_limit(threads), _torch_threads(torch, threads):
        for product in products.values():  # spins up each library's threads and pages the buffers in
            product()
        for _ in range(repeats):
            for name, product in products.items():
                best[name] = min(best[name], time_calls(product, 1)[0])
    candidates = {name: 2.0 * size**3 / (ms / 1e3) / 1e9 for name, ms in best.items()}
    library = max(candidates, key=candidates.__getitem__)
    return GemmPeak(candidates[library], library, candidates)


def _torch_or_none():
    """torch when it is installed and imports (it is not on a runtime-only install), else None."""
    try:
        import torch
    except ImportError:  # not installed, broken, or blocked on purpose
        return None
    return torch


@contextlib.contextmanager
def _torch_threads(torch, threads: int | None) -> Iterator[None]:
    """torch's intra-op pool at `threads` for the duration (no-op without torch or a thread count)."""
    if torch is None or not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _numpy_blas_name() -> str:
    """numpy and the BLAS behind it, with the kernel OpenBLAS chose for this CPU when threadpoolctl can tell."""
    name = f"numpy {np.__version__}"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return name
    blas = next((pool for pool in threadpool_info() if pool.get("user_api") == "blas"), None)
    if blas is None:
        return name
    details = [f"{blas.get('internal_api')} {'.'.join(str(blas.get('version') or '').split('.')[:3])}".strip()]
    if blas.get("architecture"):
        details.append(str(blas["architecture"]))
    return f"{name} ({', '.join(details)})"


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap numpy's BLAS pool in this process (the worker subprocess sets THREAD_ENV instead)."""
    if not threads:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the environment variables set at process start are all we have
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process image. Not
    ru_maxrss: Linux carries ru_maxrss across execve, so a worker spawned by a bench process
    that had imported torch would start at the parent's peak. Elsewhere ru_maxrss (KiB on
    BSDs, bytes on macOS), which is this process's own there.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def count_flops(model, input_shape: list[int]) -> int:
    """FLOPs of one forward pass of a PyTorch model (a multiply-add counts 2), via FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(input_shape))
    return int(counter.get_total_flops())
