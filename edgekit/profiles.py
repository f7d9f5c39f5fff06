"""Device profiles: one YAML per device in `device_profiles/`, validated by `DeviceProfile`.

A profile decides what `edgekit export` produces by default (formats in order of
preference, precisions, static sequence length, thread count) and records the
hardware figures later stages (latency estimation, budgets) rely on. Every
hardware number carries a public source so a reader can check it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import UserError

Format = Literal["onnx", "tflite", "coreml"]
#: the precision words of `edgekit.recipe.PRECISION_MEANINGS` (a test keeps the two in step)
Precision = Literal["fp32", "fp16", "int8", "int8-static", "int8-weights", "int4-weights"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CpuCluster(_Strict):
    """One cluster of identical cores (big.LITTLE SoCs have two or three)."""

    cores: int = Field(gt=0)
    ghz: float = Field(gt=0)
    microarchitecture: str
    dot_product: bool = Field(False, description="Armv8.2 SDOT/UDOT int8 dot-product instructions")
    simd_width_bits: int = 128


class Accelerator(_Strict):
    """A GPU, NPU or DSP and the runtime path that reaches it (NNAPI, Core ML ANE...)."""

    kind: Literal["gpu", "npu", "dsp"]
    name: str
    runtimes: list[str] = Field(default_factory=list)
    tops: float | None = Field(None, description="vendor-quoted peak, int8 TOPS or FP16 TFLOPS as noted")


class Budgets(_Strict):
    """Limits the exported artifacts must meet for this device; None means unchecked."""

    latency_ms: float | None = None
    size_mb: float | None = None
    min_cosine: float | None = Field(None, description="minimum mean cosine vs the teacher (embedding models)")
    min_top1_agreement: float | None = Field(None, description="minimum top-1 agreement (classifiers)")


class Throughput(_Strict):
    """Figures a latency estimator uses; each should name its source."""

    fp32_gflops_per_core: float | None = None
    int8_gops_per_core: float | None = None
    memory_bandwidth_gbs: float | None = None


class DeviceProfile(_Strict):
    """Everything edgekit needs to know about one target device."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    display_name: str
    os: Literal["android", "ios", "linux"]
    os_min_version: str
    soc: str
    cpu_clusters: list[CpuCluster] = Field(min_length=1)
    ram_gb: float = Field(gt=0)
    accelerators: list[Accelerator] = Field(default_factory=list)
    formats: list[Format] = Field(min_length=1, description="formats to export, in order of preference")
    precisions: list[Precision] = Field(min_length=1, description="precisions to export for each format")
    seq_len: int = Field(128, gt=0, le=4096, description="static sequence length the artifacts are exported for")
    threads: int = Field(4, gt=0, description="CPU threads the app would use")
    deployment_target: str | None = Field(None, description="e.g. iOS16 for Core ML; Android API level for TFLite")
    budgets: Budgets = Field(default_factory=Budgets)
    default_recipe: str = ""
    throughput: Throughput = Field(default_factory=Throughput)
    sources: dict[str, str] = Field(default_factory=dict, description="field -> public source (URL or document)")

    @field_validator("formats", "precisions")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate entries in {value}")
        return value

    @property
    def total_cores(self) -> int:
        return sum(c.cores for c in self.cpu_clusters)


def _profile_dir():
    return resources.files("device_profiles")


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped with edgekit (file stems of device_profiles/*.yaml)."""
    return sorted(p.name[: -len(".yaml")] for p in _profile_dir().iterdir() if p.name.endswith(".yaml"))


def _parse(text: str, origin: str) -> DeviceProfile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"device profile {origin} is not valid YAML ({exc.__class__.__name__}); fix the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"device profile {origin} must be a YAML mapping of fields; see device_profiles/pixel4.yaml")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UserError(
            f"device profile {origin} is invalid at '{where}': {first['msg']}; "
            "fix the file (see device_profiles/pixel4.yaml for a valid example)"
        ) from exc


def load_profile(name_or_path: str) -> DeviceProfile:
    """Load a built-in profile by name, or a user profile from a YAML path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise UserError(f"device profile file {candidate} does not exist; pass a built-in name or a YAML file")
        return _parse(candidate.read_text(encoding="utf-8"), str(candidate))
    names = builtin_profile_names()
    if name_or_path not in names:
        raise UserError(
            f"unknown device '{name_or_path}'; run 'edgekit devices' to list them ({', '.join(names)}) or pass a profile YAML path"
        )
    text = (_profile_dir() / f"{name_or_path}.yaml").read_text(encoding="utf-8")
    return _parse(text, f"'{name_or_path}'")


def all_profiles() -> list[DeviceProfile]:
    return [load_profile(n) for n in builtin_profile_names()]
