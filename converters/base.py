"""The export layer's extension points: `Converter` (torch -> artifact), `Runtime`
(run an artifact on numpy inputs) and the registry that holds converters by format.

Adding a format is one new module in `converters/` whose converter class is
decorated with `@register_converter`; `get_converter` discovers it by importing
every public module of this package on first use (so `edgekit devices` never pays
for importing TensorFlow or coremltools).
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from edgekit.errors import UserError

#: How a number was obtained; every figure in a report carries one of these.
MEASURED_HOST = "measured-host"
MIL_REFERENCE_HOST = "mil-reference-host"  # Core ML program interpreted in numpy: not device kernels
NOT_RUN = "not-run"
#: second output of early-exit artifacts: how many layers ran for this input
EXIT_LAYER = "exit_layer"


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of one artifact input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ExportSpec:
    """What the export layer is asked to produce for one artifact.

    `example_inputs` are real tokenised texts (int64, `[1, seq_len]`); converters trace
    with them and static-quantization passes may calibrate on `calibration_inputs`.
    The artifact is written to `workdir / (stem + the format's suffix)`.
    """

    precision: str
    seq_len: int
    input_names: list[str]
    output_names: list[str]
    example_inputs: dict[str, np.ndarray]
    deployment_target: str | None = None
    opset: int = 17
    stem: str = "model"
    calibration_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    #: int8: keep the most sensitive ops in float until the calibration-text cosine reaches this (None = all int8)
    min_fidelity: float | None = None


@dataclass
class Artifact:
    """One exported model file (or package directory) plus what an app needs to call it."""

    format: str
    precision: str
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: dict[str, int] = field(default_factory=dict)
    embedding_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    #: early exit: the layer each verification text stopped at, as the artifact's runtime reported it
    exit_layers: Any = None

    @property
    def name(self) -> str:
        return self.path.name

    def size_bytes(self) -> int:
        """Bytes on disk (a directory such as an .mlpackage is summed over its files)."""
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("exit_layers", None)
        data["path"] = self.path.name
        data["inputs"] = [t.to_json() for t in self.inputs]
        data["outputs"] = [t.to_json() for t in self.outputs]
        return data


class Runtime(Protocol):
    """Runs an artifact on named numpy inputs and returns named numpy outputs."""

    name: str
    version: str
    provenance: str
    threads: int | None
    #: False when timings of this runtime say nothing about the device (e.g. the MIL reference interpreter).
    measures_latency: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Converter(ABC):
    """Lowers a torch model with the forward contract of DESIGN.md into one format."""

    format: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    input_dtype: ClassVar[str] = "int64"
    #: True when `lower` turns an early-exit model (one with `segments()`) into real graph control flow
    lowers_control_flow: ClassVar[bool] = False
    #: True when int8 honours `ExportSpec.min_fidelity` (sensitivity-driven float fallbacks)
    mixed_precision: ClassVar[bool] = False

    @abstractmethod
    def lower(self, model: torch.nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
        """Write the artifact into `workdir` and describe it."""

    @abstractmethod
    def runtime(self, artifact: Artifact, threads: int) -> Runtime:
        """A runtime for the artifact; raise `RuntimeUnavailable` when it cannot run here."""

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UserError(f"{self.format} cannot export precision '{precision}'; use one of {', '.join(self.precisions)}")


class RuntimeUnavailable(Exception):
    """The artifact's runtime cannot execute on this host; the message says why."""


_REGISTRY: dict[str, type[Converter]] = {}
_discovered = False


def register_converter(cls: type[Converter]) -> type[Converter]:
    """Class decorator: make a converter available under its `format` name."""
    if cls.format in _REGISTRY and _REGISTRY[cls.format] is not cls:
        raise ValueError(f"converter for format {cls.format!r} registered twice")
    _REGISTRY[cls.format] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import converters

    for info in pkgutil.iter_modules(converters.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"converters.{info.name}")
    _discovered = True


def available_formats() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_converter(fmt: str) -> Converter:
    _discover()
    if fmt not in _REGISTRY:
        raise UserError(f"unknown format '{fmt}'; use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[fmt]()


def cast_inputs(inputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Cast named inputs to the artifact's declared dtypes (apps feed int32 or int64)."""
    by_name = {s.name: s for s in specs}
    missing = set(by_name) - set(inputs)
    if missing:
        raise ValueError(f"missing inputs {sorted(missing)}")
    return {name: np.ascontiguousarray(inputs[name], dtype=by_name[name].dtype) for name in by_name}
