"""ONNX `int8-static`: QDQ int8 weights and activations, ranges calibrated on sample texts.

Recipe (measured on all-MiniLM-L6-v2, seq 128, 100 held-out texts, see bench/static_int8.py):
- the unfused TorchScript export is quantized, not the ORT-fused graph: the fused `Attention` op
  takes no QDQ activations (quantize_static left it weight-only), while the unfused graph gets
  QDQ around every weight MatMul and onnxruntime fuses those into integer kernels at load time;
- every `nn.Linear` is first split into an int8 part and a float part holding its 8 largest-range
  input channels (`converters._outlier_split`): min/max per-tensor int8 activations on all weight
  MatMuls alone give mean cosine ~0.93, with the split ~0.99;
- MinMax calibration, moving average of the per-text ranges (global min/max over 128 texts: mean
  cosine 0.985, moving average: 0.995), over the real tokens only (calibration rows are trimmed to
  their length; the export has a dynamic sequence axis). Percentile (99.999) gave no gain (~0.93
  without the split) and needs equal-length rows; Entropy is the same histogram machinery, slower;
- per-channel symmetric int8 weights, asymmetric uint8 activations (U8S8, onnxruntime's CPU default);
- left float: the attention score / context MatMuls (activation x activation; quantizing them
  kept fidelity but ran slower here), Softmax and the additive mask, LayerNorm, GELU (Erf), the
  residual Adds and the pooling / L2 normalisation;
- embedding tables stored as uint8 with one scale per table (QDQ Gather; 60 -> 24 MB, mean cosine
  0.995 -> 0.9946), dequantized after the lookup.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from converters._outlier_split import OUTLIER_SCOPE, split_outlier_channels
from converters.base import Artifact, ExportSpec

#: input channels per Linear kept in float (see converters._outlier_split)
OUTLIER_CHANNELS = 8
#: calibration rows used at most (MinMax converges quickly; each row is one onnxruntime run)
MAX_CALIBRATION_ROWS = 128
CALIBRATION_METHOD = "MinMax, moving average of per-text ranges"
#: ops that carry no arithmetic worth quantizing; not listed as float fallbacks
_PLUMBING = {
    "QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape",
    "Transpose", "Cast", "Slice", "Expand", "ConstantOfShape", "Equal", "Where", "Identity", "Range",
}  # fmt: skip


class _Rows:
    """onnxruntime CalibrationDataReader over batch-1 rows."""

    def __init__(self, rows: list[dict[str, np.ndarray]]) -> None:
        self.rows = rows
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.rows):
            return None
        self.i += 1
        return self.rows[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def calibration_rows(spec: ExportSpec, trim: bool) -> list[dict[str, np.ndarray]]:
    """int64 batch-1 rows; trimmed to their real length (right padding dropped) when the graph allows it."""
    rows = spec.calibration_inputs or [spec.example_inputs]
    out = []
    for row in rows[:MAX_CALIBRATION_ROWS]:
        row = {n: np.asarray(row[n][:1], dtype=np.int64) for n in spec.input_names}
        mask = row.get("attention_mask")
        if trim and mask is not None:
            n = max(int(mask.sum()), 1)
            if bool(mask[0, :n].all()):
                row = {k: v[:, :n] for k, v in row.items()}
        out.append(row)
    return out


def float_fallbacks(model) -> dict[str, int]:
    """Op types (and counts) computing in float: everything but the MatMuls fed by DequantizeLinear."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in _PLUMBING or (node.op_type == "MatMul" and node.input[0] in dq_out):
            continue
        label = node.op_type
        if node.op_type == "MatMul":
            label = "MatMul (outlier channels)" if OUTLIER_SCOPE in node.name else "MatMul (attention scores/context)"
        counts[label] += 1
    return dict(sorted(counts.items()))


def lower_static(converter, model: torch.nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from converters.onnx import _specs, embedding_table_bytes, op_histogram, torchscript_export

    target = workdir / f"{spec.stem}{converter.suffix}"
    raw = workdir / f".{spec.stem}.static-raw.onnx"
    static_sequence = bool(getattr(model, "static_sequence", False))
    rows = calibration_rows(spec, trim=not static_sequence)
    split, chosen = split_outlier_channels(model, rows, OUTLIER_CHANNELS)
    args = tuple(torch.from_numpy(np.asarray(spec.example_inputs[n][:1], dtype=np.int64)) for n in spec.input_names)
    dynamic = {n: {0: "batch"} if static_sequence else {0: "batch", 1: "sequence"} for n in spec.input_names}
    dynamic[spec.output_names[0]] = {0: "batch"}
    torchscript_export(split, args, raw, spec.input_names, spec.output_names, dynamic, spec.opset)
    try:
        proto = onnx.load(str(raw))
        inits = {i.name for i in proto.graph.initializer}
        exclude = [
            n.name
            for n in proto.graph.node
            if n.op_type == "MatMul" and (OUTLIER_SCOPE in n.name or n.input[1] not in inits)
        ]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger
        try:
            quantize_static(
                str(raw),
                str(target),
                _Rows(rows),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gather"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "CalibMovingAverage": True},
            )
        finally:
            root.setLevel(level)
    finally:
        raw.unlink(missing_ok=True)
    saved = onnx.load(str(target))
    onnx.checker.check_model(saved)
    ops = op_histogram(saved)
    fallbacks = float_fallbacks(saved)
    quantized = sum(1 for n in saved.graph.node if n.op_type == "MatMul") - sum(
        v for k, v in fallbacks.items() if k.startswith("MatMul")
    )
    notes = [
        f"opset {max(17, spec.opset)}",
        "dynamic axes: batch" if static_sequence else "dynamic axes: batch, sequence",
        "int8-static: QDQ, per-channel symmetric int8 weights, uint8 activations with static ranges; "
        f"{quantized} MatMuls take int8 activations",
        f"calibration: {CALIBRATION_METHOD} over {len(rows)} sample texts"
        + ("" if static_sequence else " (real tokens only: rows trimmed to their length)"),
        "embedding tables: uint8, one scale per table (QDQ Gather), dequantized after the lookup",
        f"outlier channels: the {OUTLIER_CHANNELS} largest-range input channels of each of {len(chosen)} Linears "
        "run in a float side MatMul",
        "float fallbacks: " + ", ".join(f"{k} x{v}" for k, v in fallbacks.items()),
        "not fused by onnxruntime.transformers (its Attention op takes no QDQ activations)",
    ]
    return Artifact(
        format=converter.format,
        precision=spec.precision,
        path=target,
        inputs=_specs(saved.graph.input),
        outputs=_specs(saved.graph.output),
        ops=ops,
        embedding_bytes=embedding_table_bytes(saved),
        notes=notes,
    )
