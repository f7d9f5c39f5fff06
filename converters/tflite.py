"""TFLite (LiteRT) converter: torch module -> `.tflite` flatbuffer, run with the LiteRT interpreter.

The torch module is converted directly with `litert-torch` (torch.export -> StableHLO ->
TFLite; no TensorFlow in the loop). The wrapper around the model takes the inputs as
int32 keyword arguments and returns a dict, so the flatbuffer's signature
(`serving_default`) is named exactly as the app sees it: inputs `input_ids`,
`attention_mask` (`token_type_ids`), output `embedding` / `logits` (never `args_0` /
`output_0`).

Precisions are post-training transforms of the fp32 flatbuffer with `ai-edge-quantizer`:
- `fp16`: weights stored as float16 and dequantized to float32 by DEQUANTIZE ops
  (the standard TFLite fp16 post-training quantization: half the size, float math);
- `int8`: dynamic-range quantization, channelwise symmetric int8 weights for
  FULLY_CONNECTED / BATCH_MATMUL / EMBEDDING_LOOKUP, float activations quantized on
  the fly by the hybrid kernels.

Every artifact is checked to need builtin ops only (no Flex / custom ops): an app that
links the plain LiteRT runtime must be able to load it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.base import (
    MEASURED_HOST,
    Artifact,
    Converter,
    ExportSpec,
    RuntimeUnavailable,
    TensorSpec,
    cast_inputs,
    register_converter,
)
from edgekit.errors import UnsupportedOpError, UserError

SUFFIX = ".tflite"
#: litert-torch names the one signature of a converted module like a TF SavedModel does.
SIGNATURE_KEY = "serving_default"

PRECISION_NOTES = {
    "fp32": "fp32: float32 weights and activations",
    "fp16": "fp16: float16 weights expanded by DEQUANTIZE ops, float32 compute",
    "int8": "int8: dynamic-range quantization, int8 weights (channelwise, symmetric) / float activations",
    "int8-static": "int8-static: int8 weights and activations with calibrated ranges (converters._tflite_static)",
}

#: Ops whose constant operand at this input index is an embedding table.
_TABLE_INPUT = {"EMBEDDING_LOOKUP": 1, "GATHER": 0}
#: litert-torch keeps the torch module path in tensor names: `.../torch.nn.modules.sparse.Embedding_word_embeddings`.
_EMBEDDING_NAME = re.compile(r"(torch\.nn\.modules\.sparse\.Embedding|(^|[/._])(word|position|token_type)_embeddings)")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Flatbuffer inspection
# ---------------------------------------------------------------------------------------------


def _read_bytes(model: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    return Path(model).read_bytes()


@functools.cache
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


class _Flatbuffer:
    """Read-only view of a .tflite flatbuffer: op names per operator, tensors, buffer sizes."""

    def __init__(self, data: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.data = data
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ValueError("not a TFLite flatbuffer (missing the TFL3 identifier)")
        self.model = schema.Model.GetRootAsModel(data, 0)
        names = _op_names()
        self.opcodes: list[str] = []
        self.custom: set[str] = set()
        for i in range(self.model.OperatorCodesLength()):
            oc = self.model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            name = names.get(code, f"BUILTIN_{code}")
            if name == "CUSTOM":
                custom = oc.CustomCode()
                name = custom.decode("utf-8", "replace") if custom else "CUSTOM"
                self.custom.add(name)
            self.opcodes.append(name)

    def operators(self) -> Iterator[tuple[Any, Any, str]]:
        """(subgraph, operator, op name) for every operator of every subgraph."""
        for s in range(self.model.SubgraphsLength()):
            sg = self.model.Subgraphs(s)
            for j in range(sg.OperatorsLength()):
                op = sg.Operators(j)
                yield sg, op, self.opcodes[op.OpcodeIndex()]

    def buffer_bytes(self, index: int) -> int:
        """Bytes a buffer occupies in the file (inline data or an offset/size segment)."""
        if index <= 0 or index >= self.model.BuffersLength():
            return 0
        buf = self.model.Buffers(index)
        return int(buf.DataLength() or (buf.Size() if buf.Offset() > 1 else 0))


def op_histogram(model: str | os.PathLike[str] | bytes) -> dict[str, int]:
    """Count every op in every subgraph of a .tflite model (path or bytes).

    Builtin ops are named as in the schema (`FULLY_CONNECTED`); custom ops, including
    TensorFlow Flex ops, by their custom code (`FlexErf`).
    """
    fb = _Flatbuffer(_read_bytes(model))
    return dict(sorted(Counter(name for _, _, name in fb.operators()).items()))


def check_builtin_ops(model: str | os.PathLike[str] | bytes) -> dict[str, int]:
    """Return the op histogram of a .tflite model; raise `UnsupportedOpError` if it needs non-builtin ops.

    Flex ops (TensorFlow kernels via SELECT_TF_OPS) and any other custom op are rejected:
    the LiteRT builtin runtime an app links has no kernels for them.
    """
    fb = _Flatbuffer(_read_bytes(model))
    hist = dict(sorted(Counter(name for _, _, name in fb.operators()).items()))
    used_custom = [name for name in hist if name in fb.custom]
    flex = sorted(name for name in used_custom if name.startswith("Flex"))
    custom = sorted(name for name in used_custom if not name.startswith("Flex"))
    if flex:
        raise UnsupportedOpError(
            f"the TFLite model needs TensorFlow ops {', '.join(flex)} that the LiteRT builtin runtime lacks "
            "(they would need the Flex delegate, ~6 MB+, on device); rewrite those ops in the model with "
            "builtin-friendly torch ops or export another format (e.g. onnx)"
        )
    if custom:
        raise UnsupportedOpError(
            f"the TFLite model needs custom ops {', '.join(custom)} that the LiteRT builtin runtime lacks "
            "(the app would have to register its own kernels); replace them in the model or export another "
            "format (e.g. onnx)"
        )
    return hist


def embedding_table_bytes(model: str | os.PathLike[str] | bytes) -> int | None:
    """Bytes of the embedding tables (word / position / token-type) as stored in the file, or None.

    A tensor counts as an embedding table when it is the constant table operand of an
    EMBEDDING_LOOKUP / GATHER (followed back through a DEQUANTIZE for fp16 weights) or
    when litert-torch named it after an `nn.Embedding` (tables that a static sequence
    length folded into constants, e.g. position embeddings `[1, seq, hidden]`).
    """
    fb = _Flatbuffer(_read_bytes(model))
    found: set[tuple[int, int]] = set()  # (subgraph index, tensor index)
    for s in range(fb.model.SubgraphsLength()):
        sg = fb.model.Subgraphs(s)
        producer: dict[int, Any] = {}
        ops = [(sg.Operators(j), fb.opcodes[sg.Operators(j).OpcodeIndex()]) for j in range(sg.OperatorsLength())]
        for op, name in ops:
            for k in range(op.OutputsLength()):
                producer[op.Outputs(k)] = (op, name)
        for op, name in ops:
            idx = _TABLE_INPUT.get(name)
            if idx is None or idx >= op.InputsLength():
                continue
            t = op.Inputs(idx)
            if t in producer and producer[t][1] == "DEQUANTIZE":
                t = producer[t][0].Inputs(0)
            if t >= 0 and fb.buffer_bytes(sg.Tensors(t).Buffer()):
                found.add((s, t))
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            name = (tensor.Name() or b"").decode("utf-8", "replace")
            if _EMBEDDING_NAME.search(name) and fb.buffer_bytes(tensor.Buffer()):
                found.add((s, t))
    if not found:
        return None
    buffers = {fb.model.Subgraphs(s).Tensors(t).Buffer() for s, t in found}
    return sum(fb.buffer_bytes(b) for b in buffers)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


class _NamedInt32IO(nn.Module):
    """int32 keyword inputs in, `{output name: tensor}` out, so the signature carries the real names."""

    def __init__(self, model: nn.Module, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(**{name: inputs[name].to(torch.int64) for name in self.input_names})
        if isinstance(out, torch.Tensor):
            out = (out,)
        if isinstance(out, dict):
            values = [out[name] for name in self.output_names]
        else:
            values = list(out)[: len(self.output_names)]
        if len(values) != len(self.output_names):
            raise ValueError(f"model returned {len(values)} outputs for names {self.output_names}")
        named = zip(self.output_names, values, strict=True)
        return {name: v.float() if v.is_floating_point() else v for name, v in named}


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """Silence litert-torch's progress printing and known-harmless import / conversion chatter."""
    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    # torchao (imported by litert-torch) logs "Failed to load ..._C_mxfp8...so" for CUDA-only
    # kernels, and torch's pytree logs a deprecation for torchao's enum registration.
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "absl")]
    saved_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)
        if saved_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved_env


def _torch_to_tflite_bytes(model: nn.Module, spec: ExportSpec) -> bytes:
    """fp32 flatbuffer of `model` with the signature named after `spec` (inputs int32)."""
    with _quiet_litert():
        import litert_torch

        missing = [n for n in spec.input_names if n not in spec.example_inputs]
        if missing:
            raise ValueError(f"example_inputs lack {missing}")
        sample = {
            name: torch.from_numpy(np.ascontiguousarray(spec.example_inputs[name], dtype=np.int32))
            for name in spec.input_names
        }
        wrapper = _NamedInt32IO(model, spec.input_names, spec.output_names)
        was_training = model.training
        wrapper.eval()
        try:
            edge = litert_torch.convert(wrapper, sample_args=(), sample_kwargs=sample)
        finally:
            model.train(was_training)
        return bytes(edge.model_content())


def _quantization_recipe(precision: str) -> Any:
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    if precision == "int8":
        return recipe.dynamic_wi8_afp32()
    if precision in ("int8-weights", "int4-weights"):
        from converters import _tflite_weight_only

        return _tflite_weight_only.recipe(precision)
    if precision == "fp16":
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        return rm.get_quantization_recipe()
    raise ValueError(f"no quantization recipe for {precision!r}")


def quantize_tflite(model_bytes: bytes, precision: str) -> bytes:
    """Apply the post-training transform for `precision` ("fp32" returns the input unchanged)."""
    if precision == "fp32":
        return model_bytes
    with _quiet_litert():
        from ai_edge_quantizer import quantizer

        qt = quantizer.Quantizer(bytearray(model_bytes), _quantization_recipe(precision))
        # ai-edge-quantizer 0.10 drops `enable_progress_bar` on the way to its graph transformer,
        # whose tqdm bar then prints for any model with >100 tensors: keep it off the console.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
        except Exception:
            log.debug("ai-edge-quantizer output: %s", captured.getvalue())
            raise
    return bytes(result.quantized_model)


def _signature_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, Any]]:
    """Inputs and outputs of the default signature as the LiteRT interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    signatures = interp.get_signature_list()
    runner = interp.get_signature_runner(SIGNATURE_KEY if SIGNATURE_KEY in signatures else None)
    inputs = {
        name: TensorSpec(name, np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"]))
        for name, d in runner.get_input_details().items()
    }
    outputs = {
        name: TensorSpec(name, np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"]))
        for name, d in runner.get_output_details().items()
    }
    return list(inputs.values()), list(outputs.values()), signatures


def write_flatbuffer(data: bytes, spec: ExportSpec, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Write `data` to `path` atomically after the LiteRT interpreter has read back the signature `spec` names.

    Returns the signature's inputs and outputs in the spec's order; nothing is left at `path` if the check fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.stem}.", suffix=SUFFIX + ".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        inputs, outputs, signatures = _signature_specs(tmp)
        _check_names(spec, inputs, outputs, signatures)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    in_by_name = {t.name: t for t in inputs}
    out_by_name = {t.name: t for t in outputs}
    return [in_by_name[n] for n in spec.input_names], [out_by_name[n] for n in spec.output_names]


def finish_artifact(fmt: str, spec: ExportSpec, data: bytes, path: Path, notes: list[str]) -> Artifact:
    """Every TFLite artifact ends here: builtin ops checked (raises before anything is written), written atomically
    with its signature read back, and described (ops, embedding bytes, notes)."""
    ops = check_builtin_ops(data)
    inputs, outputs = write_flatbuffer(data, spec, path)
    return Artifact(
        format=fmt,
        precision=spec.precision,
        path=path,
        inputs=inputs,
        outputs=outputs,
        ops=ops,
        embedding_bytes=embedding_table_bytes(data),
        notes=notes,
    )


@register_converter
class TFLiteConverter(Converter):
    """PyTorch -> `.tflite` with litert-torch; fp16 / int8 with ai-edge-quantizer; builtin ops only."""

    format = "tflite"
    precisions = ("fp32", "fp16", "int8", "int8-static", "int8-weights", "int4-weights")
    input_dtype = "int32"
    lowers_control_flow = True

    def lower(self, model: nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
        weight_only = spec.precision in ("int8-weights", "int4-weights")
        if hasattr(model, "segments"):  # early exit: IF ops from tf.cond
            if weight_only:
                raise UserError(f"tflite: precision '{spec.precision}' is not implemented for early-exit models; use fp32, fp16 or int8")
            if spec.precision == "int8-static":
                raise UserError("tflite int8-static does not support early-exit models yet; use int8 (dynamic) with early exit")
            from converters._tflite_early_exit import lower_early_exit

            return lower_early_exit(self, model, spec, workdir)
        self.check_precision(spec.precision)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{spec.stem}{SUFFIX}"
        if spec.precision == "int8-static":  # selective static int8 with calibrated activation ranges
            from converters._tflite_static import lower_static

            return lower_static(self, model, spec, workdir)

        data = quantize_tflite(_torch_to_tflite_bytes(model, spec), spec.precision)
        if weight_only:
            from converters._tflite_weight_only import check_and_describe

            precision_notes = check_and_describe(data, spec.precision)  # raises if the weights stayed float
        else:
            precision_notes = [PRECISION_NOTES[spec.precision]]
        notes = [
            *precision_notes,
            f"signature '{SIGNATURE_KEY}': inputs {', '.join(spec.input_names)} (int32), "
            f"outputs {', '.join(spec.output_names)}; builtin ops only",
            _tool_versions(spec.precision),
        ]
        return finish_artifact(self.format, spec, data, path, notes)

    def runtime(self, artifact: Artifact, threads: int) -> LiteRTRuntime:
        return LiteRTRuntime(artifact, threads)


def _tool_versions(precision: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:  # pragma: no cover
            return "?"

    tools = [f"litert-torch {v('litert-torch')}"]
    if precision != "fp32":
        tools.append(f"ai-edge-quantizer {v('ai-edge-quantizer')}")
    return "converted with " + ", ".join(tools)


def _check_names(spec: ExportSpec, inputs: list[TensorSpec], outputs: list[TensorSpec], signatures: Any) -> None:
    got_in = sorted(t.name for t in inputs)
    got_out = [t.name for t in outputs]
    if got_in != sorted(spec.input_names) or sorted(got_out) != sorted(spec.output_names):
        raise RuntimeError(
            f"litert-torch produced signature {signatures}, expected inputs {spec.input_names} "
            f"and outputs {spec.output_names}"
        )


class LiteRTRuntime:
    """Runs a `.tflite` artifact through the LiteRT interpreter's signature runner (XNNPACK on CPU)."""

    name = "litert"
    provenance = MEASURED_HOST
    measures_latency = True

    def __init__(self, artifact: Artifact, threads: int | None) -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise RuntimeUnavailable(f"ai-edge-litert is not installed ({exc}); pip install ai-edge-litert") from exc
        self.version = str(getattr(ai_edge_litert, "__version__", "unknown"))
        self.threads = threads
        self.artifact = artifact
        self._interpreter = Interpreter(model_path=str(artifact.path), num_threads=threads)
        signatures = self._interpreter.get_signature_list()
        key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else next(iter(signatures), None)
        if key is None:
            raise RuntimeUnavailable(f"{artifact.path.name} has no signature; re-export it with edgekit")
        self._runner = self._interpreter.get_signature_runner(key)
        self._inputs = list(artifact.inputs)

    @staticmethod
    def available() -> tuple[bool, str]:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as exc:  # pragma: no cover
            return False, f"ai-edge-litert is not installed ({exc})"
        return True, ""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._runner(**cast_inputs(inputs, self._inputs))
        return {name: np.array(value, copy=True) for name, value in out.items()}
