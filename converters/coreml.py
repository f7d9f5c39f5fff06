"""Core ML export: `torch.jit.trace` -> `coremltools.convert` to an ML program (.mlpackage), with
fp32 / fp16 compute precision or int8 weights (fp16 compute + `linear_quantize_weights`, linear
symmetric, per output channel).

Runs in Core ML (`MLModel.predict`) on macOS. Elsewhere the saved package is still fully readable
(spec, MIL program, weights), so `runtime()` returns the MIL reference interpreter of
`converters._mil_reference`: the program executed op by op in numpy -- a check of the exported
graph and weights, *not* of the device's kernels (provenance `mil-reference-host`, no latency).

Things found while building this (coremltools 9.0, torch 2.13, numpy 2.3):
- HF BERT-style encoders build their additive attention mask as `(1 - mask) * finfo(float32).min`.
  With fp16 compute, coremltools 9.0 turns that constant into fp16 `-inf` (its overflow check
  treats |x| >= 1e38 as "infinite"), and `0 * -inf` is NaN for every *unmasked* token: under IEEE
  arithmetic the fp16 and int8 programs output NaN (the MIL reference showed exactly that). `lower`
  inserts a graph pass (`edgekit::clip_fp16_sentinels`) before `add_fp16_cast` that clips finite
  fp32 constants beyond the fp16 range to +-65504. (coremltools PR 2669 addresses this upstream;
  the installed 9.0 still has it.)
- int8 weight compression needs iOS16 / macOS13 (`constexpr_affine_dequantize`); iOS18 targets get
  `constexpr_blockwise_shift_scale` instead. Without a deployment target, int8 exports use iOS16.
- `import coremltools` takes ~10 s here (it imports TensorFlow and torchao when installed) and logs
  version warnings; it is imported lazily and its logs / progress bars are silenced.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters._mil_reference import quiet_logs
from converters.base import (
    MEASURED_HOST,
    MIL_REFERENCE_HOST,
    Artifact,
    Converter,
    ExportSpec,
    RuntimeUnavailable,
    TensorSpec,
    cast_inputs,
    register_converter,
)
from edgekit.errors import UnsupportedOpError, UserError

__all__ = [
    "CoreMLConverter",
    "CoreMLRuntime",
    "MilReferenceRuntime",
    "PackageInfo",
    "WeightMatch",
    "WeightRoundTrip",
    "inspect_package",
    "resolve_deployment_target",
    "weight_roundtrip",
]

SUFFIX = ".mlpackage"
FP16_MAX = 65504.0
#: Weight tensors smaller than this stay fp16 in int8 exports (coremltools' default threshold).
INT8_WEIGHT_THRESHOLD = 2048
SENTINEL_PASS = "edgekit::clip_fp16_sentinels"
#: precisions whose weights are stored quantized (no look-up tables / sparse storage on top)
QUANTIZED_WEIGHTS = ("int8", "int8-weights", "int4-weights")


# --------------------------------------------------------------------------------------------
# coremltools, imported lazily and quietly
# --------------------------------------------------------------------------------------------


def _coremltools():
    """`import coremltools` without its import-time chatter (see `_mil_reference.import_coremltools`)."""
    from converters._mil_reference import import_coremltools

    return import_coremltools()


class _NoTqdm:
    """Stand-in for tqdm while converting: iterates, shows nothing."""

    def __init__(self, iterable=None, *args: Any, **kwargs: Any) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else [])

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


_TQDM_SITES = (
    ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
    ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
    ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
    ("coremltools.optimize.coreml._post_training_quantization", "tqdm"),
)


@contextlib.contextmanager
def _quiet_conversion():
    """Silence coremltools' progress bars, logs and numpy warnings for the duration of a conversion."""
    import importlib

    patched = []
    for module_name, attr in _TQDM_SITES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            patched.append((module, attr, getattr(module, attr)))
            setattr(module, attr, _NoTqdm)
    try:
        with quiet_logs(), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


# --------------------------------------------------------------------------------------------
# the fp16 sentinel pass
# --------------------------------------------------------------------------------------------

_sentinel_stats = {"clipped": 0}


def _register_sentinel_pass() -> str:
    """Register (once) a graph pass that keeps huge finite fp32 constants finite in fp16.

    Runs before `common::add_fp16_cast`. A finite constant beyond +-65504 (typically the
    `finfo(float32).min` of an additive attention mask) is clipped to +-65504, so `(1 - mask) * c`
    stays 0 for kept tokens instead of becoming `0 * -inf = NaN`. Constants that are block outputs
    are left alone (they stay fp32).
    """
    _coremltools()
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    if SENTINEL_PASS in PASS_REGISTRY:
        return SENTINEL_PASS

    @register_pass(namespace="edgekit")
    class clip_fp16_sentinels(AbstractGraphPass):  # noqa: N801 - coremltools names passes in snake_case
        def apply(self, prog) -> None:
            for func in prog.functions.values():
                self._block(func)

        @block_context_manager
        def _block(self, block) -> None:
            for op in list(block.operations):
                for sub in op.blocks:
                    self._block(sub)
                if op.op_type != "const":
                    continue
                var = op.outputs[0]
                val = var.val
                if val is None or var in block.outputs:
                    continue
                arr = np.asarray(val)
                if arr.dtype != np.float32:
                    continue
                big = np.isfinite(arr) & (np.abs(arr) > FP16_MAX)
                if not big.any():
                    continue
                clipped = np.where(big, np.sign(arr) * np.float32(FP16_MAX), arr).astype(np.float32)
                new = mb.const(val=clipped if arr.ndim else np.float32(clipped), before_op=op,
                               name=var.name + "_fp16_safe")
                if block.try_replace_uses_of_var_after_op(anchor_op=op, old_var=var, new_var=new):
                    _sentinel_stats["clipped"] += 1

    return SENTINEL_PASS


# --------------------------------------------------------------------------------------------
# deployment target
# --------------------------------------------------------------------------------------------

_TARGET_RE = re.compile(r"^\s*(ios|macos|watchos|tvos)\s*(\d+)(?:\.\d+)*\s*$", re.IGNORECASE)
_PLATFORMS = {"ios": "iOS", "macos": "macOS", "watchos": "watchOS", "tvos": "tvOS"}


def resolve_deployment_target(value: str | None, precision: str = "fp32") -> tuple[Any, str, list[str]]:
    """`"iOS16"` (also "ios 16", "iOS16.4", "macOS13") -> (`ct.target.iOS16`, "iOS16", notes).

    No value means iOS15 (the first with ML programs), or iOS16 for int8 weights, which need it.
    """
    ct = _coremltools()
    notes: list[str] = []
    if value is None or not str(value).strip():
        name = "iOS16" if precision == "int8" else "iOS15"
        if precision == "int8":
            notes.append("int8 weights need iOS16 or newer: deployment target iOS16 (no target was given)")
    else:
        match = _TARGET_RE.match(str(value))
        if not match:
            raise UserError(f"unknown Core ML deployment target '{value}'; use e.g. iOS16, iOS17 or macOS13")
        name = f"{_PLATFORMS[match.group(1).lower()]}{int(match.group(2))}"
    target = getattr(ct.target, name, None)
    if target is None:
        known = ", ".join(t.name for t in ct.target if t.name.startswith(("iOS", "macOS")))
        raise UserError(f"coremltools {ct.__version__} has no deployment target '{name}'; use one of {known}")
    if target.value < ct.target.iOS15.value:
        raise UserError(f"Core ML ML programs need iOS15 / macOS12 or newer, not {name}; raise the deployment target")
    if precision == "int8" and target.value < ct.target.iOS16.value:
        raise UserError(f"Core ML int8 weights need iOS16 / macOS13 or newer, not {name}; "
                        "raise the deployment target or export fp16")
    return target, name, notes


# --------------------------------------------------------------------------------------------
# package inspection
# --------------------------------------------------------------------------------------------

_ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}
_FOLDED_EMBEDDING = re.compile(r"(position|token_type)_embeddings")


@dataclass
class PackageInfo:
    """What a saved .mlpackage says about itself, read on any OS."""

    path: Path
    spec_version: int
    opset: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: dict[str, int]
    embedding_bytes: int
    embedding_tables: list[str]
    compressed_weights: int
    program: Any = field(repr=False, default=None)


def _feature_specs(features) -> list[TensorSpec]:
    ct = _coremltools()
    names = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    out = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind != "multiArrayType":
            out.append(TensorSpec(feature.name, kind or "?", ()))
            continue
        arr = feature.type.multiArrayType
        dtype = _ARRAY_DTYPES.get(names.Name(arr.dataType), names.Name(arr.dataType).lower())
        out.append(TensorSpec(feature.name, dtype, tuple(int(d) for d in arr.shape)))
    return out


def inspect_package(path: str | Path) -> PackageInfo:
    """Open a .mlpackage with `skip_model_load=True` and read its I/O, op histogram and embedding bytes."""
    from converters._mil_reference import MilProgram

    _coremltools()
    program = MilProgram.load(path)
    tables = program.gather_tables()
    tables += [n for n in program.const_info if _FOLDED_EMBEDDING.search(n) and n not in tables]
    emb = sum(program.const_info[n].stored_bytes for n in tables)
    compressed = sum(1 for info in program.const_info.values() if info.op_type.startswith("constexpr_"))
    return PackageInfo(
        path=Path(path), spec_version=program.spec_version, opset=program.opset,
        inputs=_feature_specs(program.description.input), outputs=_feature_specs(program.description.output),
        ops=program.op_histogram(), embedding_bytes=int(emb), embedding_tables=tables,
        compressed_weights=compressed, program=program,
    )


# --------------------------------------------------------------------------------------------
# the converter
# --------------------------------------------------------------------------------------------


class _Positional(torch.nn.Module):
    """Fixes the positional argument order to the artifact's input names."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *args: torch.Tensor):
        return self.model(**dict(zip(self.names, args, strict=True)))


def _trace(model: torch.nn.Module, spec: ExportSpec) -> tuple[torch.jit.ScriptModule, list[bool]]:
    missing = [n for n in spec.input_names if n not in spec.example_inputs]
    if missing:
        raise ValueError(f"example_inputs lack {missing}")
    example = tuple(
        torch.from_numpy(np.ascontiguousarray(np.asarray(spec.example_inputs[n])[:1], dtype=np.int64))
        for n in spec.input_names
    )
    if example[0].shape[-1] != spec.seq_len:
        raise ValueError(f"example inputs have seq_len {example[0].shape[-1]}, the spec says {spec.seq_len}")
    wrapper = _Positional(model, spec.input_names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, strict=False, check_trace=False)
            out = traced(*example)
    finally:
        model.train(was_training)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != len(spec.output_names):
        raise ValueError(f"the model returns {len(outs)} outputs but output_names has {len(spec.output_names)}")
    return traced, [torch.is_floating_point(o) for o in outs]


#: a weight with at least this fraction of exact zeros is stored sparse (bitmask + values)
SPARSE_MIN_FRACTION = 0.3


def _store_zeros_sparse(mlmodel, model: torch.nn.Module, precision: str, target) -> tuple[Any, str | None]:
    """Store weights that are mostly exact zeros (unstructured pruning) as Core ML sparse constants.

    Lossless: only exact zeros go. int8 weights would need joint sparse+int8 compression (iOS18);
    below that target the zeros stay dense in the int8 tensors and the note says so.
    """
    zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() >= 2)
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    if total == 0 or zeros / total < 0.05:
        return mlmodel, None
    if precision in QUANTIZED_WEIGHTS:
        return mlmodel, (
            f"{zeros / total:.0%} of weight values are zero but stored densely: sparse + {precision} joint compression needs "
            "an iOS18 deployment target; export fp16 to store them sparse"
        )
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(
        global_config=cto.OpThresholdPrunerConfig(threshold=1e-30, minimum_sparsity_percentile=SPARSE_MIN_FRACTION, weight_threshold=2048)
    )
    with _quiet_conversion():
        mlmodel = cto.prune_weights(mlmodel, config)
    return mlmodel, (
        f"weights with >= {SPARSE_MIN_FRACTION:.0%} exact zeros stored sparse (bitmask + non-zero values); "
        f"{zeros / total:.0%} of weight values are zero"
    )


def _store_palettized(ct, mlmodel, model: torch.nn.Module, precision: str, target) -> tuple[Any, str | None]:
    """Weights the `palettize` pass clustered become Core ML look-up tables + n-bit indices (lossless: mode "unique")."""
    bits = getattr(model, "palettized_bits", None)
    if bits is None:
        return mlmodel, None
    if precision in QUANTIZED_WEIGHTS:
        return mlmodel, f"palettized weights were quantized ({precision}) instead of stored as look-up tables: export fp16 to keep them"
    import coremltools.optimize.coreml as cto

    if getattr(model, "palettized_granularity", "tensor") == "group":
        if target is None or target < ct.target.iOS18:
            return mlmodel, "per-group look-up tables need an iOS18 deployment target: weights stored dense (fp16)"
        op_config = cto.OpPalettizerConfig(mode="unique", granularity="per_grouped_channel", group_size=16, weight_threshold=2048)
    else:
        op_config = cto.OpPalettizerConfig(mode="unique", weight_threshold=2048)
    with _quiet_conversion():
        mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    return mlmodel, f"palettized weights stored as look-up tables with {bits}-bit indices (coremltools mode 'unique', lossless)"


def _unsupported_op(exc: Exception, ct) -> UnsupportedOpError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"op '([^']+)'", text)
    what = f"op '{match.group(1)}'" if match else f"an op ({text[:160]})"
    return UnsupportedOpError(
        f"coremltools {ct.__version__} cannot convert {what} to Core ML; "
        "replace it in the model (or a pass) or export another format"
    )


@register_converter
class CoreMLConverter(Converter):
    """torch -> Core ML ML program (.mlpackage): fp32, fp16, or int8 weights with fp16 compute."""

    format = "coreml"
    precisions = ("fp32", "fp16", "int8", "int8-weights", "int4-weights")
    input_dtype = "int32"
    lowers_control_flow = True

    def lower(self, model: torch.nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
        self.check_precision(spec.precision)
        ct = _coremltools()
        weight_only = spec.precision in ("int8-weights", "int4-weights")
        target, target_name, notes = resolve_deployment_target(spec.deployment_target, "fp16" if weight_only else spec.precision)
        if weight_only:
            from converters import _coreml_weight_only

            explicit = bool(spec.deployment_target and str(spec.deployment_target).strip())
            target, target_name, target_notes = _coreml_weight_only.deployment_target(ct, target, target_name, spec.precision, explicit)
            notes += target_notes
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        final = workdir / f"{spec.stem}{SUFFIX}"
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.stem}-", suffix=".coreml-tmp", dir=workdir))
        try:
            if hasattr(model, "segments"):  # early exit: traced segments under scripted ifs -> MIL cond
                from converters._coreml_early_exit import script_early_exit

                traced, floating = script_early_exit(model, spec)
            else:
                traced, floating = _trace(model, spec)
            mlmodel, clipped = self._convert(ct, traced, floating, spec, target)
            if spec.precision == "int8":
                import coremltools.optimize.coreml as cto

                config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel",
                    weight_threshold=INT8_WEIGHT_THRESHOLD,
                ))
                with _quiet_conversion():
                    mlmodel = cto.linear_quantize_weights(mlmodel, config)
            elif weight_only:
                with _quiet_conversion():
                    mlmodel = _coreml_weight_only.quantize(mlmodel, spec.precision)
            mlmodel, palette_note = _store_palettized(ct, mlmodel, model, spec.precision, target)
            if palette_note:
                notes.append(palette_note)
            mlmodel, sparse_note = _store_zeros_sparse(mlmodel, model, spec.precision, target)
            if sparse_note:
                notes.append(sparse_note)
            staged = staging / final.name
            with _quiet_conversion():
                mlmodel.save(str(staged))
            del mlmodel
            info = inspect_package(staged)
            self._check_io(info, spec)
            if final.is_dir():
                shutil.rmtree(final)
            elif final.exists():
                final.unlink()
            staged.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        compute = "fp32" if spec.precision == "fp32" else "fp16"
        notes = [
            f"deployment target {target_name} (Core ML specification version {info.spec_version}, "
            f"ML program opset {info.opset})",
            f"compute precision {compute}",
            *notes,
        ]
        if spec.precision == "int8":
            notes.append(f"int8 weights (linear symmetric, per output channel) in {info.compressed_weights} tensors; "
                         f"tensors under {INT8_WEIGHT_THRESHOLD} elements stay fp16")
        elif weight_only:
            stored: dict[str, int] = {}
            for const in info.program.const_info.values():
                if const.op_type.startswith("constexpr_"):
                    stored[const.dtype] = stored.get(const.dtype, 0) + 1
            notes += _coreml_weight_only.notes(spec.precision, info.ops, info.compressed_weights, stored)
        if hasattr(model, "segments"):
            notes.append(
                f"early exit: {len(model.exits)} nested MIL cond ops (torch.jit.script over traced segments); "
                f"criterion {model.criterion}, threshold {float(model.threshold[0]):g} is a program constant"
            )
        if clipped:
            notes.append(f"{clipped} fp32 constant(s) beyond the fp16 range (attention-mask sentinels) clipped to "
                         "+-65504 so fp16 keeps masked scores finite (coremltools 9.0 would make them -inf, and "
                         "0 * -inf = NaN)")
        return Artifact(
            format=self.format, precision=spec.precision, path=final, inputs=info.inputs, outputs=info.outputs,
            ops=info.ops, embedding_bytes=info.embedding_bytes, notes=notes,
        )

    @staticmethod
    def _convert(ct, traced, floating: list[bool], spec: ExportSpec, target) -> tuple[Any, int]:
        inputs = [ct.TensorType(name=n, shape=(1, spec.seq_len), dtype=np.int32) for n in spec.input_names]
        outputs = [ct.TensorType(name=n, dtype=np.float32) if is_float else ct.TensorType(name=n)
                   for n, is_float in zip(spec.output_names, floating, strict=True)]
        pipeline = ct.PassPipeline.DEFAULT
        if spec.precision == "fp32":
            precision = ct.precision.FLOAT32
        else:
            precision = ct.precision.FLOAT16
            pipeline.insert_pass(pipeline.passes.index("common::add_fp16_cast"), _register_sentinel_pass())
        _sentinel_stats["clipped"] = 0
        try:
            with _quiet_conversion():
                mlmodel = ct.convert(
                    traced, source="pytorch", convert_to="mlprogram", inputs=inputs, outputs=outputs,
                    minimum_deployment_target=target, compute_precision=precision, pass_pipeline=pipeline,
                    skip_model_load=True,
                )
        except NotImplementedError as exc:
            raise _unsupported_op(exc, ct) from exc
        return mlmodel, _sentinel_stats["clipped"]

    @staticmethod
    def _check_io(info: PackageInfo, spec: ExportSpec) -> None:
        names_in = [t.name for t in info.inputs]
        names_out = [t.name for t in info.outputs]
        problems = []
        if names_in != list(spec.input_names):
            problems.append(f"inputs {names_in} != {list(spec.input_names)}")
        if names_out != list(spec.output_names):
            problems.append(f"outputs {names_out} != {list(spec.output_names)}")
        for t in info.inputs:
            if t.dtype != "int32" or t.shape != (1, spec.seq_len):
                problems.append(f"input {t.name} is {t.dtype}{list(t.shape)}, expected int32[1, {spec.seq_len}]")
        if problems:
            raise RuntimeError(f"saved Core ML package does not match the export spec: {'; '.join(problems)}")

    def runtime(self, artifact: Artifact, threads: int) -> Any:
        """Core ML itself on macOS; the MIL reference interpreter (numpy) everywhere else."""
        if sys.platform == "darwin":
            return CoreMLRuntime(artifact)
        return MilReferenceRuntime(artifact)


# --------------------------------------------------------------------------------------------
# runtimes
# --------------------------------------------------------------------------------------------


def _run_rows(fn, inputs: dict[str, np.ndarray], specs: list[TensorSpec], outputs: list[str]) -> dict[str, np.ndarray]:
    """Run a batch-1 model row by row (artifacts have static `[1, seq]` inputs)."""
    cast = cast_inputs(inputs, specs)
    batch = next(iter(cast.values())).shape[0]
    rows = [fn({k: v[i : i + 1] for k, v in cast.items()}) for i in range(batch)]
    return {name: np.concatenate([np.asarray(r[name]) for r in rows]) for name in outputs}


class MilReferenceRuntime:
    """Executes the saved ML program in numpy: MIL reference on host, not device kernels."""

    name = "mil-reference (numpy)"
    provenance = MIL_REFERENCE_HOST
    measures_latency = False
    threads: int | None = None
    latency_reason = ("Core ML prediction needs macOS; the MIL reference interpreter checks graph and weights "
                      "in numpy, not the device's kernels or speed")

    def __init__(self, artifact: Artifact) -> None:
        from converters._mil_reference import MilProgram

        ct = _coremltools()
        self.artifact = artifact
        self.version = f"numpy {np.__version__} (package read by coremltools {ct.__version__})"
        try:
            self.program = MilProgram.load(artifact.path)
        except RuntimeUnavailable:
            raise
        except Exception as exc:
            raise RuntimeUnavailable(f"cannot read {artifact.path.name} for the MIL reference: {exc}") from exc
        self.output_names = [t.name for t in artifact.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_rows(self.program.run, inputs, self.artifact.inputs, self.output_names)


class CoreMLRuntime:
    """`MLModel.predict` (macOS only), compute units ALL; Core ML does not expose a thread count."""

    name = "coreml"
    provenance = MEASURED_HOST
    measures_latency = True
    threads: int | None = None

    def __init__(self, artifact: Artifact, compute_units: str = "ALL") -> None:
        ct = _coremltools()
        self.artifact = artifact
        self.version = f"coremltools {ct.__version__}"
        try:
            self.model = ct.models.MLModel(str(artifact.path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:  # pragma: no cover - macOS only
            raise RuntimeUnavailable(f"Core ML cannot load {artifact.path.name}: {exc}") from exc
        self.output_names = [t.name for t in artifact.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - macOS only
        return _run_rows(self.model.predict, inputs, self.artifact.inputs, self.output_names)


# --------------------------------------------------------------------------------------------
# weight round-trip
# --------------------------------------------------------------------------------------------


@dataclass
class WeightMatch:
    """One torch parameter found in the saved program, and how far the stored weights are from it.

    `bound` is the largest error the storage format allows for this tensor: 0 for fp32, the fp16
    rounding error of these very values for fp16, half a quantization step (+ fp16 rounding of
    scale and result) for int8. `exact` says whether the stored values equal the torch values cast
    to the storage dtype (None for quantized storage).
    """

    torch_name: str
    const_name: str
    shape: tuple[int, ...]
    stored_dtype: str
    how: str  # "name", "value" (deduplicated constant), "slice" (e.g. position embeddings [:seq_len])
    max_abs_err: float
    max_abs: float
    bound: float
    exact: bool | None

    @property
    def rel_err(self) -> float:
        return self.max_abs_err / self.max_abs if self.max_abs > 0 else self.max_abs_err

    @property
    def within_bound(self) -> bool:
        return self.max_abs_err <= self.bound * (1 + 1e-6) + 1e-12


@dataclass
class WeightRoundTrip:
    """Saved weights vs the torch module's, per matched tensor; `unmatched` lists torch parameters
    not found as a tensor (e.g. token-type embeddings folded into another constant)."""

    matches: list[WeightMatch]
    unmatched: list[str]

    @property
    def max_rel_err(self) -> float:
        return max((m.rel_err for m in self.matches), default=0.0)

    @property
    def max_abs_err(self) -> float:
        return max((m.max_abs_err for m in self.matches), default=0.0)

    def all_within_bounds(self) -> bool:
        return all(m.within_bound for m in self.matches)

    def by_dtype(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.matches:
            counts[m.stored_dtype] = counts.get(m.stored_dtype, 0) + 1
        return counts

    def summary(self) -> str:
        return (f"{len(self.matches)} tensors matched ({self.by_dtype()}), {len(self.unmatched)} not found; "
                f"max abs err {self.max_abs_err:.3g}, max rel err {self.max_rel_err:.3g}, "
                f"all within storage bounds: {self.all_within_bounds()}")


def _strip_suffixes(name: str) -> str:
    previous = None
    while previous != name:
        previous = name
        name = re.sub(r"(_to_fp16|_to_fp32|_quantized|_palettized|_sparsified|_cast_fp16|_promoted)$", "", name)
    return name


def _storage_bound(info, value: np.ndarray, reference: np.ndarray) -> tuple[float, bool | None]:
    if info.op_type == "const":
        if info.dtype == "fp16":
            rounded = reference.astype(np.float16).astype(np.float32)
            return float(np.max(np.abs(reference - rounded), initial=0.0)), bool(np.array_equal(value, rounded))
        return 0.0, bool(np.array_equal(value, reference.astype(value.dtype)))
    scale = info.params.get("scale")
    if scale is None:
        return float("inf"), None
    max_scale = float(np.max(np.abs(scale.astype(np.float32)), initial=0.0))
    fp16_out = np.float32(2.0**-11) * float(np.max(np.abs(value), initial=0.0))
    steps = 16 if info.dtype in ("int4", "uint4") else 128  # |q - offset| <= 15 for asymmetric int4
    # half a step, the fp16 rounding of the scale (|q| <= `steps` steps) and of the dequantized result
    return max_scale * (0.5 + steps * 2.0**-11) + float(fp16_out), None


def weight_roundtrip(package: Artifact | str | Path, module: torch.nn.Module) -> WeightRoundTrip:
    """Read the saved package's weights back (int8 decompressed to float) and compare with `module`'s.

    Constants are matched to parameters by name (coremltools names them after the torch
    attribute path: `encoder.layer.0.x.weight` -> `..._encoder_layer_0_x_weight[_to_fp16][_quantized]`),
    then, for parameters left over, by value among constants of the same shape (deduplicated
    constants) or as a leading slice (position embeddings folded to `[:seq_len]`), accepting a
    value match only within the storage format's error bound.
    """
    from converters._mil_reference import MilProgram

    path = package.path if isinstance(package, Artifact) else Path(package)
    _coremltools()
    program = MilProgram.load(path)
    consts: dict[str, tuple[Any, np.ndarray]] = {}
    by_key: dict[str, str] = {}
    for name, info in program.const_info.items():
        value = program.constants[name]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim == 0:
            continue
        consts[name] = (info, value.astype(np.float32))
        key = _strip_suffixes(name)
        by_key.setdefault(key, name)

    matches: list[WeightMatch] = []
    unmatched: list[str] = []

    def record(tname: str, cname: str, how: str, ref: np.ndarray) -> WeightMatch:
        info, value = consts[cname]
        err = float(np.max(np.abs(value.reshape(ref.shape) - ref), initial=0.0))
        bound, exact = _storage_bound(info, value.reshape(ref.shape), ref)
        return WeightMatch(tname, cname, tuple(ref.shape), info.dtype, how, err,
                           float(np.max(np.abs(ref), initial=0.0)), bound, exact)

    for tname, param in module.named_parameters():
        ref = param.detach().to(torch.float32).cpu().numpy()
        key = tname.replace(".", "_")
        cname = by_key.get(f"model_{key}") or by_key.get(key)
        if cname is not None and consts[cname][1].size == ref.size:
            matches.append(record(tname, cname, "name", ref))
            continue
        best: WeightMatch | None = None
        for cname, (_info, value) in consts.items():
            squeezed = value.reshape([d for i, d in enumerate(value.shape) if d != 1 or i >= value.ndim - ref.ndim])
            if squeezed.shape == ref.shape:
                cand = record(tname, cname, "value", ref)
            elif (squeezed.ndim == ref.ndim == 2 and squeezed.shape[1] == ref.shape[1]
                  and squeezed.shape[0] < ref.shape[0]):
                cand = record(tname, cname, "slice", ref[: squeezed.shape[0]])
                cand.torch_name = f"{tname}[:{squeezed.shape[0]}]"
            else:
                continue
            if cand.within_bound and (best is None or cand.max_abs_err < best.max_abs_err):
                best = cand
        if best is None:
            unmatched.append(tname)
        else:
            matches.append(best)
    return WeightRoundTrip(matches, unmatched)
