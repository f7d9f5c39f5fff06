"""The report.json schema. Every figure says how it was obtained (`provenance`):

- `measured-host`: measured on this machine (file sizes on disk; runtime outputs and timings),
- `mil-reference-host`: a Core ML program interpreted in numpy on this machine (graph + weights
  check, not the device's kernels),
- `estimated-device` / `measured-device`: reserved for the estimator and the adb runner,
- `not-run`: the number could not be obtained here; `reason` says why.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class SizeReport(BaseModel):
    bytes: int
    mb: float
    embedding_bytes: int | None = Field(description="bytes of embedding tables stored in the artifact")
    without_embeddings_mb: float | None
    provenance: str = "measured-host"
    method: str = "file size on disk; embedding bytes read from the artifact's own tensors"


class FidelityReport(BaseModel):
    metrics: dict[str, float] = Field(default_factory=dict)
    n_texts: int = 0
    runtime: str | None = None
    runtime_version: str | None = None
    provenance: str
    reason: str | None = None


class LatencyReport(BaseModel):
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    threads: int | None = None
    batch: int = 1
    seq_len: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    runtime: str | None = None
    provenance: str
    reason: str | None = None


class ArtifactReport(BaseModel):
    name: str
    format: str
    precision: str
    path: str
    size: SizeReport
    parameters: dict[str, int]
    fidelity: FidelityReport
    latency: LatencyReport
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    ops: dict[str, int]
    notes: list[str] = Field(default_factory=list)
    dynamic: dict[str, Any] | None = Field(
        None, description="early exit: exit rate per layer measured by running the artifact on the texts; token skipping: the schedule"
    )


class BudgetCheck(BaseModel):
    artifact: str
    budget: str
    limit: float
    value: float | None
    passed: bool | None
    provenance: str
    note: str = ""


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    edgekit_version: str
    created_utc: str
    device: dict[str, Any]
    teacher: dict[str, Any]
    recipe: dict[str, Any]
    host: dict[str, Any]
    texts: dict[str, Any]
    versions: dict[str, str]
    reference: dict[str, Any] = Field(description="the PyTorch teacher measured the same way, for comparison")
    artifacts: list[ArtifactReport]
    budgets: list[BudgetCheck]
    notes: list[str] = Field(default_factory=list)
    passes: list[dict[str, Any]] = Field(default_factory=list, description="what each recipe pass did, as it recorded it")

    @property
    def budgets_passed(self) -> bool:
        return all(b.passed is not False for b in self.budgets)
