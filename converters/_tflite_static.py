"""TFLite `int8-static`: int8 weights and int8 activations (calibrated ranges) on every FULLY_CONNECTED.

The naive route (full-integer conversion of the whole graph) collapsed to cosine 0.34-0.95
(DESIGN.md): the additive attention mask (finfo.min) and the LayerNorm / Softmax arithmetic do
not survive per-tensor int8. This path quantizes selectively with ai-edge-quantizer instead:
- the fp32 flatbuffer comes from litert-torch as for the other precisions (int32 ids / mask in,
  float32 embedding out: the app's I/O does not change);
- every `nn.Linear` is first split into an int8 part and a float part for its 8 largest-range
  input channels (`converters._outlier_split`); without the split, static int8 FULLY_CONNECTED
  on all-MiniLM-L6-v2 gives mean cosine ~0.94, with it ~0.995 (100 held-out texts, seq 128);
- static config (min/max calibration on the sample texts, int8 activations, channelwise int8
  weights) on FULLY_CONNECTED; QUANTIZE / DEQUANTIZE ops at the boundaries;
- left float, and listed in the artifact's notes: the outlier-channel FULLY_CONNECTEDs, the
  attention BATCH_MATMULs, SOFTMAX and the mask ADD, the LayerNorm arithmetic, GELU, residual
  ADDs and pooling. Attention scores never meet the int8 grid, so the mask's huge negative bias
  is harmless;
- the embedding table gets int8 weights (channelwise, as for `int8`): 60 -> 25 MB, mean cosine
  0.9938 -> 0.9939 on the teacher.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
from torch import nn

from converters._outlier_split import OUTLIER_SCOPE, split_outlier_channels
from converters.base import Artifact, ExportSpec

OUTLIER_CHANNELS = 8
MAX_CALIBRATION_ROWS = 128
CALIBRATION_METHOD = "min/max (ai-edge-quantizer MIN_MAX_UNIFORM_QUANT)"
#: ops that move or convert data; not listed as float fallbacks
_PLUMBING = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "CAST", "GATHER", "GATHER_ND", "SLICE", "STRIDED_SLICE", "CONCATENATION"}


def _recipe():
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    rm.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    rm.add_dynamic_config(  # embedding tables: int8 weights, the lookup output is float
        regex=".*",
        operation_name=qtyping.TFLOperationName.EMBEDDING_LOOKUP,
        num_bits=8,
    )
    # the latest matching scope wins: the outlier-channel side Linears stay float
    rm.add_quantization_config(
        regex=OUTLIER_SCOPE,
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(),
        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE,
    )
    return rm.get_quantization_recipe()


def quantize_static(data: bytes, rows: list[dict[str, np.ndarray]], signature: str) -> bytes:
    from ai_edge_quantizer import quantizer

    from converters.tflite import _quiet_litert

    with _quiet_litert():
        qt = quantizer.Quantizer(bytearray(data), _recipe())
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            ranges = qt.calibrate({signature: rows}, num_threads=1)
            result = qt.quantize(ranges)
    return bytes(result.quantized_model)


def int8_activation_ops(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """(op types with an int8 activation input, op types computing in float), excluding data movement."""
    from ai_edge_litert import schema_py_generated as schema

    from converters.tflite import _Flatbuffer

    fb = _Flatbuffer(data)
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for sg, op, name in fb.operators():
        if name in _PLUMBING:
            continue
        inputs = [op.Inputs(i) for i in range(op.InputsLength()) if op.Inputs(i) >= 0]
        acts = [sg.Tensors(t) for t in inputs if not fb.buffer_bytes(sg.Tensors(t).Buffer())]  # no constant data
        label = name
        if name == "FULLY_CONNECTED":
            out_name = (sg.Tensors(op.Outputs(0)).Name() or b"").decode("utf-8", "replace")
            if OUTLIER_SCOPE in out_name.split(";")[0]:
                label = "FULLY_CONNECTED (outlier channels)"
        elif name == "EMBEDDING_LOOKUP" and any(sg.Tensors(t).Type() == schema.TensorType.INT8 for t in inputs):
            label = "EMBEDDING_LOOKUP (int8 table, float output)"
        if any(t.Type() == schema.TensorType.INT8 for t in acts):
            quantized[label] += 1
        else:
            floating[label] += 1
    return dict(sorted(quantized.items())), dict(sorted(floating.items()))


def lower_static(converter, model: nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
    from converters.tflite import (
        SIGNATURE_KEY,
        SUFFIX,
        _tool_versions,
        _torch_to_tflite_bytes,
        finish_artifact,
    )

    path = workdir / f"{spec.stem}{SUFFIX}"
    rows = [{n: np.asarray(r[n][:1]) for n in spec.input_names} for r in (spec.calibration_inputs or [spec.example_inputs])]
    rows = rows[:MAX_CALIBRATION_ROWS]
    split, chosen = split_outlier_channels(model, rows, OUTLIER_CHANNELS)
    data = _torch_to_tflite_bytes(split, spec)
    data = quantize_static(data, [{k: v.astype(np.int32) for k, v in r.items()} for r in rows], SIGNATURE_KEY)
    quantized, floating = int8_activation_ops(data)
    notes = [
        "int8-static: int8 activations (static ranges) and channelwise int8 weights on "
        + ", ".join(f"{k} x{v}" for k, v in quantized.items()),
        f"calibration: {CALIBRATION_METHOD} over {len(rows)} sample texts",
        "embedding table: int8 weights (channelwise), float lookup output",
        f"outlier channels: the {OUTLIER_CHANNELS} largest-range input channels of each of {len(chosen)} Linears "
        "run in a float side FULLY_CONNECTED",
        "float fallbacks: " + ", ".join(f"{k} x{v}" for k, v in floating.items()),
        f"signature '{SIGNATURE_KEY}': inputs {', '.join(spec.input_names)} (int32), "
        f"outputs {', '.join(spec.output_names)} (float32); builtin ops only",
        _tool_versions(spec.precision),
    ]
    return finish_artifact(converter.format, spec, data, path, notes)
