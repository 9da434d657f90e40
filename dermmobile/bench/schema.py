"""The bench's typed records: one latency row (host, phone or browser) and the report that holds them.

`BenchRow` is the one schema of a latency row. The host bench writes it, the Android app's
benchmark screen and the web demo write it, and `dermmobile bench --merge` reads it; it is
published for the apps as JSON Schema in `dermmobile/schemas/bench-row.schema.json`
(`python -m dermmobile.bench.schema` rewrites it; a test checks it is up to date).
Unknown keys are refused: a row either means what the schema says or is not merged.

`BenchReport` checks a `bench.json` read back for `--merge` (it may have been edited by
anyone): the fields the Markdown and the plots use have the types they need; the rest of
each object is kept as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from dermmobile.targets.base import QUANTIZATIONS
from dermmobile.validation import SCHEMA_CONFIG, Count, Name, NonNegative, Number, Positive, Sha256, ShortText

SCHEMA = "dermmobile-bench"  # a bench report's "schema" and "schema_version"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "bench-row.schema.json"
Identifier = Annotated[str, Field(strict=True, pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
KEPT = ConfigDict(extra="allow", allow_inf_nan=False)  # a report's objects: typed where used, other keys kept


class LatencyStats(BaseModel):
    """Milliseconds over timed calls: numpy 'linear' percentiles, population std (ddof 0)."""

    model_config = SCHEMA_CONFIG
    p50: NonNegative
    p90: NonNegative
    p99: NonNegative
    mean: NonNegative
    std: NonNegative
    min: NonNegative | None = None
    max: NonNegative | None = None
    n: Positive | None = None

    @model_validator(mode="after")
    def _ordered(self):
        if not self.p50 <= self.p90 <= self.p99:
            raise ValueError(f"percentiles must satisfy p50 <= p90 <= p99, got {self.p50}, {self.p90}, {self.p99}")
        return self


class EndToEnd(BaseModel):
    """What a person waits for per photo, step by step (dermmobile.bench.latency.EndToEnd)."""

    model_config = SCHEMA_CONFIG
    files: Positive
    decode_ms: LatencyStats
    preprocess_ms: LatencyStats
    inference_ms: LatencyStats
    total_ms: LatencyStats
    total_over_inference_p50: NonNegative | None = None


class BenchRow(BaseModel):
    """One latency measurement of one artifact at one thread count on one device."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        title="dermmobile bench row",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "bench-row.schema.json"},
    )
    source: Identifier = Field(description='where it was measured: "host", "android", "web", "ios", "pi", ...')
    device: Name = Field(description="CPU or phone model, OS and ABI, e.g. 'Google Pixel 8 (Android 15, arm64-v8a)'")
    artifact: Name = Field(description="the artifact's file name (its manifest's 'file')")
    format: Identifier = Field(description="tflite, onnx, ... (pytorch for the host's reference)")
    quantization: Literal[QUANTIZATIONS] = Field(description="the manifest's quantization")
    threads: Annotated[StrictInt, Field(ge=1, le=4096)] = Field(description="runtime threads")
    latency_ms: LatencyStats | None = Field(None, description="inference only, after warm-up; required when status is ok")
    iterations: Positive | None = Field(None, description="timed calls; required when status is ok")
    status: Literal["ok", "error", "not-run"] = "ok"
    error: Annotated[str, Field(strict=True, max_length=4000)] | None = None
    warmup: Count | None = None
    load_ms: NonNegative | None = None
    cold_load_ms: NonNegative | None = None
    first_inference_ms: NonNegative | None = None
    end_to_end_ms: LatencyStats | None = Field(None, description="decode + preprocess + inference per image file")
    preprocess_ms: LatencyStats | None = None
    end_to_end: dict[Identifier, EndToEnd] | None = Field(
        None, description="per photo source (images: the data set's, phone_12mp: a 12 MP JPEG): decode, preprocess, inference"
    )
    e2e_images: Count | None = None
    file_bytes: Count | None = None
    sha256: Sha256 | None = None
    peak_rss_mb: NonNegative | None = None
    rss_before_load_mb: NonNegative | None = None
    peak_rss_scope: ShortText | None = None
    flops: Count | None = None
    gflops_per_s: NonNegative | None = None
    gemm_peak_gflops: NonNegative | None = None
    peak_fraction: NonNegative | None = None
    torch_imported: StrictBool | None = None
    top1_matches_golden: StrictBool | None = Field(None, description="phones: every golden image's top-1 equals Python's")
    merged_from: ShortText | None = None
    runtime: ShortText | None = Field(None, description="the runtime and its version, e.g. 'LiteRT.js 2.1 (WebAssembly, CPU)'")
    file_served: Name | None = Field(None, description="browsers: the file the page ran (a uint8-I/O twin of an int8 artifact)")
    cross_origin_isolated: StrictBool | None = Field(None, description="browsers: WebAssembly threads were available")
    user_agent: Annotated[str, Field(strict=True, max_length=1000)] | None = None
    created: ShortText | None = None

    @model_validator(mode="after")
    def _measured_when_ok(self):
        if self.status == "ok" and (self.latency_ms is None or self.iterations is None):
            raise ValueError("a row with status ok needs latency_ms and iterations")
        return self


class Parity(BaseModel):
    model_config = KEPT
    accuracy: Number | None = None
    accuracy_drop_points: Number | None = None
    agreement: Number | None = None
    max_abs_logit: Number | None = None
    mean_abs_logit: Number | None = None
    min_cosine: Number | None = None
    confusion_drift_l1: Number | None = None
    flips: list[dict] = []
    confusion: list[list[StrictInt]] | None = None


class ArtifactEntry(BaseModel):
    model_config = KEPT
    name: Name  # becomes a file name (confusions/<name>.png): checked to stay in its folder

    role: Literal["reference", "compiled", "artifact"]
    format: ShortText
    quantization: ShortText
    status: ShortText
    error: str | None = None
    bytes: Count | None = None
    parity: Parity | None = None

    @model_validator(mode="after")
    def _plain_name(self):
        from dermmobile.artifact import plain_file_name

        if not plain_file_name(self.name) or self.name.startswith("."):
            raise ValueError(f"artifact name {self.name!r} is not a plain file name")
        return self


class DataInfo(BaseModel):
    model_config = KEPT
    root: str
    split: ShortText
    images: Count | None = None
    classes: list[str] = []
    bad_files: list = []


class Machine(BaseModel):
    model_config = KEPT
    cpu: str
    cores: StrictInt | None
    os: str
    python: str


class Settings(BaseModel):
    model_config = KEPT
    threads: list[StrictInt]
    warmup: Count
    iters: Count


class Reference(BaseModel):
    model_config = KEPT
    name: str
    note: str
    flops: Count | None = None


class BenchReport(BaseModel):
    """A bench.json as `dermmobile bench --merge` reads it back."""

    model_config = KEPT
    schema_: Literal[SCHEMA] = Field(alias="schema")
    schema_version: Literal[SCHEMA_VERSION]
    created: ShortText
    machine: Machine
    versions: dict[str, str]
    settings: Settings
    gemm_peak_gflops: dict[str, Number | None]
    data: DataInfo
    reference: Reference
    artifacts: list[ArtifactEntry]
    rows: list[BenchRow]
    problems: list[str] = []


def write_json_schema(path: Path = SCHEMA_FILE) -> Path:
    """Write BenchRow's JSON Schema (the apps' copy of the rule)."""
    from dermmobile.fsutil import atomic_write_text

    atomic_write_text(path, json_schema_text())
    return path


def json_schema_text() -> str:
    return json.dumps(BenchRow.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(write_json_schema())
