"""Device latency estimated from an artifact's op graph: a roofline per op, calibrated on this host.

How a number is produced (`Estimate.method` is the one-paragraph version printed in reports):

1. **Op graph with shapes.** ONNX: the graph onnxruntime executes (the artifact after ORT's
   hardware-independent "extended" optimisations, e.g. int8 MatMuls become `DynamicQuantizeMatMul`),
   at batch 1 and the requested sequence length, shapes from `onnx.shape_inference` plus edgekit's
   rules for the `com.microsoft` fused ops (Attention, QAttention, SkipLayerNormalization,
   EmbedLayerNormalization, BiasGelu, DynamicQuantizeMatMul, MatMulIntegerToFloat, FusedMatMul...),
   with a one-run onnxruntime probe as a fallback for anything left unknown. TFLite: the
   flatbuffer's static tensor shapes, op by op (FULLY_CONNECTED, BATCH_MATMUL, ...). Core ML is not
   covered (its CPU/GPU/ANE dispatch is not modelled): `UserError`.
2. **Cost per op**, as parts with a kind, a precision, FLOPs and bytes: `gemm` (activation x
   constant weights, 2*M*K*N), `bmm` (activation x activation: attention scores and context),
   vector classes `ew` / `transc` / `softmax` / `norm` (nominal operations per element from
   `VECTOR_OPS_PER_ELEMENT`), `memory` (transpose, gather, concat: bytes only) and `free`
   (reshape-like: dispatch overhead only). Dynamic int8 ops add the on-the-fly quantisation of
   their input as an element-wise part; constant fp16 weights behind a TFLite DEQUANTIZE are
   expanded to fp32 once at load (free) and read as fp32.
3. **Soft roofline**: per part, compute = FLOPs / rate(kind, precision) and memory = weight bytes
   / DRAM bandwidth (the share of weights that fits the last-level cache / cache bandwidth) +
   activation bytes / cache bandwidth (data-movement ops: their own bandwidth); time =
   (compute^p + memory^p)^(1/p), p between 1 (no overlap) and 8 (~ max, the classic roofline);
   time(op) = sum of its parts + per-op overhead (+ an extra fixed overhead for attention ops);
   total = sum over ops + per-call overhead.
4. **Calibration on this host** (`edgekit.verify.host_peaks`): synthetic micro-benchmarks in the
   artifact's own runtime at the same thread count; every rate, both bandwidths, p and the
   overheads are fitted (least squares on log time) so that this same cost model explains them.
   No model validated in `bench/estimator.py` is used for calibration.
5. **Transfer to a device**: efficiency = fitted host rate / host nominal peak (cores x GHz x
   FLOPs/cycle of the host microarchitecture); device rate = device nominal peak (the profile's
   `threads` fastest cores, GHz from the profile, FLOPs/cycle from `MICROARCH_TABLE` or the
   profile's `throughput.*_per_core`) x that efficiency (from the 1-thread calibration) x
   `PARALLEL_EFFICIENCY` when threads > 1. DRAM bandwidth = profile figure x
   `DEVICE_DRAM_EFFICIENCY` (weights always from DRAM: profiles carry no cache size); cache
   bandwidths scale with the SIMD peak; overheads with the clock ratio; p is kept.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserError

ESTIMATED_DEVICE = "estimated-device"
ESTIMATED_HOST = "estimated-host"

# ---------------------------------------------------------------------------------------------
# Hardware tables
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroArch:
    """Nominal per-core, per-cycle peaks of one CPU microarchitecture."""

    name: str
    fp32_flops_per_cycle: float
    #: int8 multiply-accumulate ops per cycle (2 per MAC) with the Armv8.2 SDOT/UDOT (or x86 VNNI) path.
    int8_ops_per_cycle_dot: float
    source: str


_CPUFP = "https://github.com/pigirons/cpufp/blob/master/benchmark_result/arm64"
#: (regex on the lower-cased `microarchitecture` string, entry). First match wins, so specific names come first.
MICROARCH_TABLE: list[tuple[str, MicroArch]] = [
    (
        r"cortex-x3\b",
        MicroArch(
            "Cortex-X3", 32, 128, "4x128-bit FP/ASIMD FMA pipes: https://www.anandtech.com/show/17440/arm-cortex-x3-a715-a510-refresh"
        ),
    ),
    (
        r"cortex-x1\b",
        MicroArch(
            "Cortex-X1",
            32,
            128,
            "4x128-bit ASIMD FMA pipes: https://www.anandtech.com/show/15813/arm-cortex-a78-cortex-x1-cpu-ip-diverging/4",
        ),
    ),
    (
        r"cortex-a78\b",
        MicroArch(
            "Cortex-A78", 16, 64, "2x128-bit ASIMD pipes: https://www.anandtech.com/show/15813/arm-cortex-a78-cortex-x1-cpu-ip-diverging/2"
        ),
    ),
    (
        r"cortex-a7(15|10)\b",
        MicroArch(
            "Cortex-A710/A715", 16, 64, "2x128-bit ASIMD pipes: https://www.anandtech.com/show/17440/arm-cortex-x3-a715-a510-refresh"
        ),
    ),
    (
        r"cortex-a7[67]\b",
        MicroArch(
            "Cortex-A76/A77", 16, 64, f"measured 38.4 GFLOPS fp32 / 153.5 GOPS SDOT per core at 2.4 GHz: {_CPUFP}/Broadcom_BCM2712.md"
        ),
    ),
    (r"cortex-a72\b", MicroArch("Cortex-A72", 8, 32, f"measured 11.96 GFLOPS fp32 per core at 1.5 GHz: {_CPUFP}/Broadcom_BCM2711.md")),
    (
        r"cortex-a55\b",
        MicroArch("Cortex-A55", 8, 32, f"measured 14.6 GFLOPS fp32 / 58.4 GOPS SDOT per core at 1.8 GHz: {_CPUFP}/RockChip_RK3588.md"),
    ),
    (
        r"cortex-a5[12]0\b",
        MicroArch(
            "Cortex-A510/A520",
            8,
            32,
            f"Cortex-A520 (same shared-VPU design) 14.3 GFLOPS / 57.4 GOPS per core at 1.8 GHz: {_CPUFP}/CIX_P1_CD8180.md",
        ),
    ),
    (
        r"avalanche|everest|firestorm",
        MicroArch(
            "Apple P-core (Firestorm/Avalanche/Everest)",
            32,
            128,
            f"4x128-bit NEON FMA; M2 P-core (Avalanche) measured 107 GFLOPS / 425 GOPS at ~3.5 GHz: {_CPUFP}/Apple_Silicon_M2_Max.md",
        ),
    ),
    (
        r"lightning",
        MicroArch("Apple Lightning", 24, 96, "3x128-bit NEON FMA: https://www.anandtech.com/show/16226/apple-silicon-m1-a14-deep-dive/2"),
    ),
    (
        r"blizzard|icestorm|sawtooth|thunder",
        MicroArch(
            "Apple E-core",
            16,
            64,
            f"M2 E-core (Blizzard) measured 23.7 GFLOPS (>= 2x128-bit FMA at <= 2.4 GHz): {_CPUFP}/Apple_Silicon_M2_Max.md",
        ),
    ),
]
#: Without SDOT/VNNI, int8 GEMM kernels use widening multiply-accumulate (SMLAL / PMADDUBSW+PMADDWD): ~2x fp32.
INT8_NO_DOT_FACTOR = 2.0
INT8_NO_DOT_SOURCE = "assumption: widening int8 multiply-accumulate (8 MACs per 128-bit SMLAL, 4 per fp32 FMLA) = 2x the fp32 rate"
#: Share of the summed per-core peaks that multi-threaded kernels reach on a device (threads > 1).
PARALLEL_EFFICIENCY = 0.8
PARALLEL_SOURCE = (
    "assumption: GEMM-dominated transformer inference in onnxruntime / XNNPACK typically gains ~75-90% per added big core; "
    "not calibrated (this host's own multi-thread scaling is not representative of a phone)"
)
#: Fraction of the theoretical LPDDR bandwidth a CPU inference reaches on a phone (STREAM-like copy).
DEVICE_DRAM_EFFICIENCY = 0.5
DEVICE_DRAM_SOURCE = "assumption: STREAM-style CPU copy bandwidth on mobile SoCs is roughly half the LPDDR theoretical peak; not calibrated"

# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------

#: Nominal vector operations per output element (per input element for reductions). Calibration
#: fits the vector rate with these same counts, so only their ratios matter.
VECTOR_OPS_PER_ELEMENT: dict[str, float] = {
    # onnx
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Abs": 1, "Neg": 1, "Sqrt": 1, "Reciprocal": 1,
    "Pow": 2, "Where": 1, "Equal": 1, "Greater": 1, "Less": 1, "Not": 1, "And": 1, "Or": 1, "Clip": 2, "Relu": 1,
    "Cast": 1, "Erf": 8, "Tanh": 8, "Exp": 8, "Log": 8, "Sigmoid": 8, "Gelu": 10, "FastGelu": 10, "BiasGelu": 11,
    "QuickGelu": 10, "Softmax": 11, "LayerNormalization": 8, "SkipLayerNormalization": 10,
    "SimplifiedLayerNormalization": 5, "SkipSimplifiedLayerNormalization": 7, "ReduceSum": 1, "ReduceMean": 1,
    "ReduceMax": 1, "ReduceL2": 2, "DynamicQuantizeLinear": 4, "QuantizeLinear": 3, "DequantizeLinear": 2,
    # tflite
    "ADD": 1, "SUB": 1, "MUL": 1, "DIV": 1, "MAXIMUM": 1, "MINIMUM": 1, "ABS": 1, "NEG": 1, "SQRT": 1, "RSQRT": 2,
    "SQUARED_DIFFERENCE": 2, "CAST": 1, "EQUAL": 1, "NOT_EQUAL": 1, "LESS": 1, "GREATER": 1, "SELECT": 1,
    "SELECT_V2": 1, "LOGICAL_AND": 1, "LOGICAL_NOT": 1, "RELU": 1, "POW": 2, "GELU": 10, "TANH": 8, "EXP": 8,
    "LOG": 8, "LOGISTIC": 8, "SOFTMAX": 11, "MEAN": 1, "SUM": 1, "REDUCE_MAX": 1, "QUANTIZE": 3, "DEQUANTIZE": 2,
    "L2_NORMALIZATION": 3, "HARD_SWISH": 3,
}  # fmt: skip
#: Ops that only re-label a buffer (dispatch overhead, no data movement counted).
FREE_OPS = {
    "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Shape", "Size", "Constant", "ConstantOfShape",
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SHAPE",
}  # fmt: skip
#: Vector op types with their own calibrated rate (everything else element-wise: "ew").
VECTOR_CLASSES: dict[str, set[str]] = {
    "transc": {
        "Erf",
        "Tanh",
        "Exp",
        "Log",
        "Sigmoid",
        "Gelu",
        "FastGelu",
        "BiasGelu",
        "QuickGelu",
        "GELU",
        "TANH",
        "EXP",
        "LOG",
        "LOGISTIC",
        "HARD_SWISH",
    },
    "softmax": {"Softmax", "SOFTMAX"},
    "norm": {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "L2_NORMALIZATION",
    },
}
#: Embedding tables: rows gathered by the op are read from DRAM.
_GATHER_OPS = {"Gather", "GatherElements", "GATHER", "EMBEDDING_LOOKUP", "GATHER_ND"}

_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_TFL_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 15: 4, 16: 2, 18: 2}


@dataclass
class OpPart:
    """One roofline term of an op."""

    kind: str  # gemm | bmm | vector | memory
    precision: str  # fp32 | fp16 | int8
    flops: float = 0.0
    weight_bytes: float = 0.0
    act_bytes: float = 0.0


@dataclass
class OpCost:
    """FLOPs and bytes of one op of the graph, split in roofline parts."""

    name: str
    op_type: str
    precision: str
    parts: list[OpPart] = field(default_factory=list)
    free: bool = False
    note: str = ""

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.parts)

    @property
    def bytes(self) -> float:
        return sum(p.weight_bytes + p.act_bytes for p in self.parts)

    @property
    def weight_bytes(self) -> float:
        return sum(p.weight_bytes for p in self.parts)


def _prod(shape) -> int:
    return int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1


def vector_class(op_type: str) -> str:
    """Which calibrated vector rate an element-wise op type uses."""
    for cls, types in VECTOR_CLASSES.items():
        if op_type in types:
            return cls
    return "ew"


def _vector_op(name: str, op_type: str, elements: int, act_bytes: float, precision: str = "fp32") -> OpCost:
    ops = VECTOR_OPS_PER_ELEMENT.get(op_type, 1)
    return OpCost(name, op_type, precision, [OpPart(vector_class(op_type), "fp32", ops * elements, 0.0, act_bytes)])


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def ort_executed_graph(path: str | os.PathLike[str]):
    """The ONNX graph onnxruntime executes: the artifact after ORT's hardware-independent optimisations.

    Falls back to the artifact as stored when onnxruntime cannot save the optimised graph.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-est-") as tmp:
        out = Path(tmp) / "executed.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            return onnx.load(str(out))
        except Exception:  # pragma: no cover - an artifact ORT cannot load fails later with a clear error
            return onnx.load(str(path))


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _contrib_shapes(node, shapes: dict[str, tuple], dtypes: dict[str, int]) -> dict[str, tuple[tuple, int]]:
    """Output shapes of com.microsoft ops that onnx shape inference does not know."""
    t = node.op_type
    ins = list(node.input)

    def s(i):
        return shapes.get(ins[i]) if i < len(ins) and ins[i] else None

    out: dict[str, tuple[tuple, int]] = {}
    f32 = 1
    if t in ("Attention", "QAttention"):
        x, w = s(0), s(1)
        if x is None or w is None:
            return {}
        sizes = _attr(node, "qkv_hidden_sizes")
        hv = int(sizes[2]) if sizes else int(w[-1]) // 3
        out[node.output[0]] = ((*x[:-1], hv), f32)
    elif t in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd"):
        x = s(0)
        if x is None:
            return {}
        out[node.output[0]] = (x, dtypes.get(ins[0], f32))
        if t.startswith("Skip") and len(node.output) > 3 and node.output[3]:
            out[node.output[3]] = (x, dtypes.get(ins[0], f32))
    elif t in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
        ids, word = s(0), s(2)
        if ids is None or word is None:
            return {}
        out[node.output[0]] = ((*ids, int(word[-1])), f32)
        if len(node.output) > 1 and node.output[1]:
            out[node.output[1]] = ((ids[0],), 6)
        if len(node.output) > 2 and node.output[2]:
            out[node.output[2]] = ((*ids, int(word[-1])), f32)
    elif t in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedMatMul", "MatMulNBits"):
        a, b = s(0), s(1)
        if a is None or b is None:
            return {}
        if t == "FusedMatMul":
            a = (*a[:-2], a[-1], a[-2]) if _attr(node, "transA", 0) else a
            b = (*b[:-2], b[-1], b[-2]) if _attr(node, "transB", 0) else b
        n = int(_attr(node, "N", 0)) if t == "MatMulNBits" else int(b[-1])
        out[node.output[0]] = ((*a[:-1], n), f32)
    elif t == "MultiHeadAttention":
        q, v = s(0), s(2)
        if q is None:
            return {}
        out[node.output[0]] = ((*q[:-1], int(v[-1]) if v is not None and len(v) == 3 else int(q[-1])), f32)
    return out


def _onnx_shapes(model, seq_len: int, batch: int = 1) -> tuple[dict[str, tuple], dict[str, int]]:
    """Static shape and element type of every tensor at `[batch, seq_len]` inputs."""
    import onnx

    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.ClearField("dim_param")
                d.dim_value = batch if i == 0 else seq_len
    del model.graph.value_info[:]  # stale symbolic shapes ("batch", "sequence") would shadow the concrete ones
    full = model
    model = _without_large_initializers(model)
    shapes: dict[str, tuple] = {}
    dtypes: dict[str, int] = {}
    for _ in range(4 * len(model.graph.node) + 1):  # each round gets past at least one more contrib op
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            tt = v.type.tensor_type
            if not tt.HasField("shape"):
                continue
            dims = tt.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[v.name] = tuple(int(d.dim_value) for d in dims)
                dtypes[v.name] = tt.elem_type
        for init in inferred.graph.initializer:
            shapes[init.name] = tuple(int(d) for d in init.dims)
            dtypes[init.name] = init.data_type
        added = False
        for node in model.graph.node:
            if node.domain not in ("com.microsoft",):
                continue
            for name, (shape, dt) in _contrib_shapes(node, shapes, dtypes).items():
                if name not in shapes:
                    model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, dt, list(shape)))
                    shapes[name] = tuple(shape)
                    dtypes[name] = dt
                    added = True
        if not added:
            break
    for init in full.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        dtypes[init.name] = init.data_type
    missing = [o for n in full.graph.node for o in n.output if o and o not in shapes]
    if missing:
        _probe_shapes(full, missing, shapes, dtypes, seq_len, batch)
    return shapes, dtypes


def _without_large_initializers(model):
    """A copy for repeated shape inference: weights become typed graph inputs (only small constants such as
    Reshape targets keep their values, which shape inference needs)."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if _prod(init.dims) <= 64:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _probe_shapes(model, names: list[str], shapes: dict, dtypes: dict, seq_len: int, batch: int) -> None:
    """Fallback for tensors shape inference leaves unknown: run the graph once in onnxruntime and read them."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in names:
        if n not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # pragma: no cover - shapes stay unknown; those ops are costed as overhead only
        return
    feeds = {}
    for i in sess.get_inputs():
        dt = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}.get(i.type, np.float32)
        shape = shapes.get(i.name) or tuple(batch if k == 0 else seq_len for k in range(len(i.shape)))
        feeds[i.name] = np.ones(shape, dtype=dt)
    outs = [o.name for o in sess.get_outputs()]
    for name, value in zip(outs, sess.run(outs, feeds), strict=True):
        if name in names:
            shapes[name] = tuple(int(d) for d in value.shape)
            dtypes[name] = {np.float32: 1, np.float16: 10, np.int8: 3, np.uint8: 2, np.int32: 6, np.int64: 7, np.bool_: 9}.get(
                value.dtype.type, 1
            )


def onnx_op_costs(path: str | os.PathLike[str], seq_len: int, batch: int = 1, *, executed: bool = True) -> list[OpCost]:
    """Per-op FLOPs/bytes of an ONNX artifact at `[batch, seq_len]` (the graph ORT executes unless `executed=False`)."""
    import onnx

    model = ort_executed_graph(path) if executed else onnx.load(str(path))
    shapes, dtypes = _onnx_shapes(model, seq_len, batch)
    inits = {i.name for i in model.graph.initializer}
    return [_onnx_node_cost(node, shapes, dtypes, inits) for node in model.graph.node]


def _onnx_node_cost(node, shapes: dict[str, tuple], dtypes: dict[str, int], inits: set[str]) -> OpCost:
    t = node.op_type
    name = node.name or f"{t}_{node.output[0]}"

    def shp(x):
        return shapes.get(x) if x else None

    def nbytes(x):
        s = shp(x)
        return 0 if s is None else _prod(s) * _ONNX_ITEMSIZE.get(dtypes.get(x, 1), 4)

    act_in = sum(nbytes(x) for x in node.input if x and x not in inits)
    w_in = sum(nbytes(x) for x in node.input if x and x in inits)
    act_out = sum(nbytes(x) for x in node.output if x)
    out0 = shp(node.output[0]) if node.output else None
    fp = "fp16" if dtypes.get(node.input[0] if node.input else "", 1) == 10 else "fp32"
    ins = list(node.input)

    if t in FREE_OPS:
        return OpCost(name, t, fp, [], free=True)
    if out0 is None:
        return OpCost(name, t, fp, [], free=True, note="shape unknown: costed as dispatch overhead only")
    if t in ("MatMul", "MatMulInteger", "FusedMatMul", "Gemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        a = shp(ins[0])
        if a is None:
            return OpCost(name, t, fp, [], free=True, note="shape unknown")
        trans_a = bool(_attr(node, "transA", 0)) and t in ("Gemm", "FusedMatMul")
        k = int(a[-2] if trans_a else a[-1])
        flops = 2.0 * _prod(out0) * k
        int8 = t in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat") or dtypes.get(ins[1], 1) in (2, 3)
        prec = "int8" if int8 else fp
        kind = "gemm" if ins[1] in inits else "bmm"
        parts = []
        if t == "DynamicQuantizeMatMul":  # quantises its float input on the fly
            parts.append(OpPart("ew", "fp32", VECTOR_OPS_PER_ELEMENT["DynamicQuantizeLinear"] * _prod(a), 0, nbytes(ins[0])))
        parts.append(OpPart(kind, prec, flops, w_in, act_in + act_out))
        if t == "MatMulIntegerToFloat":
            parts.append(OpPart("ew", "fp32", 2 * _prod(out0), 0, 0))
        return OpCost(name, t, prec, parts)
    if t in ("Attention", "QAttention"):
        x, w = shp(ins[0]), shp(ins[1])
        heads = int(_attr(node, "num_heads", 1))
        if x is None or w is None:
            return OpCost(name, t, fp, [], free=True, note="shape unknown")
        b, s, hin = (x[0], x[1], x[2]) if len(x) == 3 else (1, x[0], x[-1])
        sizes = _attr(node, "qkv_hidden_sizes")
        hq, hk, hv = (int(v) for v in sizes) if sizes else (int(w[-1]) // 3,) * 3
        prec = "int8" if t == "QAttention" else fp
        proj = 2.0 * b * s * hin * (hq + hk + hv)
        qkv_bytes = 4.0 * b * s * (hq + hk + hv)
        parts = [OpPart("gemm", prec, proj, w_in, act_in + qkv_bytes)]
        if t == "QAttention":  # dequantise the int32 accumulators
            parts.append(OpPart("ew", "fp32", 2.0 * b * s * (hq + hk + hv), 0, 0))
        scores = b * heads * s * s
        parts.append(OpPart("bmm", "fp32", 2.0 * b * s * s * hq + 2.0 * b * s * s * hv, 0, qkv_bytes + 8.0 * scores + act_out))
        parts.append(OpPart("softmax", "fp32", (VECTOR_OPS_PER_ELEMENT["Softmax"] + 1) * scores, 0, 0))
        return OpCost(name, t, prec, parts)
    if t == "MultiHeadAttention":
        q = shp(ins[0])
        heads = int(_attr(node, "num_heads", 1))
        b, s, h = q if len(q) == 3 else (1, q[0], q[-1])
        scores = b * heads * s * s
        return OpCost(
            name,
            t,
            fp,
            [
                OpPart("bmm", "fp32", 4.0 * b * s * s * h, 0, act_in + 8.0 * scores + act_out),
                OpPart("softmax", "fp32", (VECTOR_OPS_PER_ELEMENT["Softmax"] + 1) * scores, 0, 0),
            ],
        )
    if t in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
        elems = _prod(out0)
        tables = sum(1 for i in ins[2:5] if i)
        return OpCost(
            name,
            t,
            "int8" if t.startswith("Q") else fp,
            [
                OpPart("memory", "fp32", 0, 4.0 * elems * tables, act_in),
                OpPart("norm", "fp32", (VECTOR_OPS_PER_ELEMENT["LayerNormalization"] + tables) * elems, 0, act_out),
            ],
        )
    if t in _GATHER_OPS:
        return OpCost(
            name, t, fp, [OpPart("memory", "fp32", 0, act_out if ins[0] in inits else 0, act_out * (1 if ins[0] in inits else 2))]
        )
    if t in VECTOR_OPS_PER_ELEMENT:
        elems = _prod(shp(ins[0]) or out0) if t.startswith("Reduce") else _prod(out0)
        return _vector_op(name, t, elems, act_in + act_out + w_in, precision=fp)
    # data movement (Transpose, Concat, Slice, Expand, Split, Tile, Pad...) and anything unknown
    note = (
        ""
        if t in ("Transpose", "Concat", "Slice", "Expand", "Split", "Tile", "Pad", "Range", "NonZero", "TopK")
        else "unknown op: bytes only"
    )
    return OpCost(name, t, fp, [OpPart("memory", "fp32", 0, w_in, act_in + act_out)], note=note)


# ---------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------


def tflite_op_costs(path: str | os.PathLike[str]) -> tuple[list[OpCost], int | None]:
    """Per-op FLOPs/bytes of a .tflite artifact from its static tensor shapes; also its sequence length."""
    from ai_edge_litert import schema_py_generated as schema

    from converters.tflite import _Flatbuffer

    fb = _Flatbuffer(Path(path).read_bytes())
    costs: list[OpCost] = []
    seq_len = None
    main = fb.model.Subgraphs(0)
    if main.InputsLength():
        first = main.Tensors(main.Inputs(0))
        shape = list(first.ShapeAsNumpy()) if first.ShapeLength() else []
        seq_len = int(shape[-1]) if len(shape) >= 2 else None
    producers_of: dict[int, dict[int, Any]] = {}
    ops = [
        (s, sg, sg.Operators(j))
        for s in range(fb.model.SubgraphsLength())
        for sg in [fb.model.Subgraphs(s)]
        for j in range(sg.OperatorsLength())
    ]
    for idx, (s_idx, sg, op) in enumerate(ops):
        t = fb.opcodes[op.OpcodeIndex()]

        def tensor(i, sg=sg):
            return None if i < 0 else sg.Tensors(i)

        def shape(i, sg=sg):
            tt = tensor(i, sg)
            return None if tt is None else tuple(int(d) for d in (tt.ShapeAsNumpy() if tt.ShapeLength() else []))

        def is_const(i, sg=sg):
            tt = tensor(i, sg)
            return tt is not None and fb.buffer_bytes(tt.Buffer()) > 0

        def nbytes(i, sg=sg):
            tt = tensor(i, sg)
            return 0 if tt is None else _prod(shape(i, sg)) * _TFL_ITEMSIZE.get(tt.Type(), 4)

        ins = [op.Inputs(k) for k in range(op.InputsLength())]
        outs = [op.Outputs(k) for k in range(op.OutputsLength())]
        name = f"{t}_{idx}"
        out0 = shape(outs[0]) if outs else ()
        act_in = sum(nbytes(i) for i in ins if i >= 0 and not is_const(i))
        w_in = sum(nbytes(i) for i in ins if i >= 0 and is_const(i))
        act_out = sum(nbytes(i) for i in outs)

        if t in FREE_OPS:
            costs.append(OpCost(name, t, "fp32", [], free=True))
            continue
        if t == "DEQUANTIZE" and ins and is_const(ins[0]):
            costs.append(OpCost(name, t, "fp16", [], free=True, note="constant weights: dequantised once when the model is loaded"))
            continue
        if t in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            if s_idx not in producers_of:
                producers_of[s_idx] = {
                    sg.Operators(j).Outputs(k): sg.Operators(j)
                    for j in range(sg.OperatorsLength())
                    for k in range(sg.Operators(j).OutputsLength())
                }
            producers = producers_of[s_idx]
            a = shape(ins[0])
            w_idx = ins[1]
            w_type = tensor(w_idx).Type()
            w_const = is_const(w_idx)
            w_bytes = nbytes(w_idx) if w_const else 0
            if not w_const and w_idx in producers:  # fp16 weights behind a DEQUANTIZE
                src = producers[w_idx]
                if fb.opcodes[src.OpcodeIndex()] == "DEQUANTIZE" and is_const(src.Inputs(0)):
                    w_const, w_bytes = True, nbytes(w_idx)  # expanded to fp32 once at load, read as fp32
                    w_type = tensor(src.Inputs(0)).Type()  # the stored precision (fp16) labels the op
            if t == "FULLY_CONNECTED":
                k = int(shape(w_idx)[-1])
                n = int(shape(w_idx)[0])
                rows = _prod(a) // max(k, 1)
                flops = 2.0 * rows * k * n
                qin = rows * k
            else:
                opts = schema.BatchMatMulOptions()
                table = op.BuiltinOptions()
                adj_x = False
                if table is not None:
                    opts.Init(table.Bytes, table.Pos)
                    adj_x = bool(opts.AdjX())
                k = int(a[-2] if adj_x else a[-1])
                flops = 2.0 * _prod(out0) * k
                qin = _prod(a)
            int8 = w_type == 9 and tensor(ins[0]).Type() == 0  # int8 weights, float activations: dynamic range
            prec = "int8" if int8 else ("fp16" if w_type == 1 else "fp32")
            kind = "gemm" if w_const else "bmm"
            bias = sum(nbytes(i) for i in ins[2:] if i >= 0 and is_const(i))
            parts = []
            if int8:
                parts.append(OpPart("ew", "fp32", VECTOR_OPS_PER_ELEMENT["QUANTIZE"] * qin, 0, 0))
            acts = nbytes(ins[0]) + (0 if w_const else nbytes(w_idx)) + act_out
            parts.append(OpPart(kind, prec, flops, w_bytes + bias, acts))
            costs.append(OpCost(name, t, prec, parts))
            continue
        if t in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = shape(ins[1])
            per_out = 2.0 * (w[1] * w[2] * (w[3] if t == "CONV_2D" else 1))
            prec = "int8" if tensor(ins[1]).Type() == 9 else "fp32"
            costs.append(OpCost(name, t, prec, [OpPart("gemm", prec, per_out * _prod(out0), w_in, act_in + act_out)]))
            continue
        if t in _GATHER_OPS:
            table_const = bool(ins) and any(is_const(i) for i in ins)
            costs.append(
                OpCost(name, t, "fp32", [OpPart("memory", "fp32", 0, act_out if table_const else 0, act_out * (1 if table_const else 2))])
            )
            continue
        if t in VECTOR_OPS_PER_ELEMENT:
            reduce = t in ("MEAN", "SUM", "REDUCE_MAX")
            elems = _prod(shape(ins[0])) if reduce else _prod(out0)
            costs.append(_vector_op(name, t, elems, act_in + act_out + w_in))
            continue
        known = {
            "TRANSPOSE",
            "CONCATENATION",
            "SLICE",
            "STRIDED_SLICE",
            "PACK",
            "UNPACK",
            "SPLIT",
            "SPLIT_V",
            "TILE",
            "PAD",
            "BROADCAST_TO",
        }
        costs.append(
            OpCost(
                name, t, "fp32", [OpPart("memory", "fp32", 0, w_in, act_in + act_out)], note="" if t in known else "unknown op: bytes only"
            )
        )
    return costs, seq_len


# ---------------------------------------------------------------------------------------------
# Effective machine figures and prediction
# ---------------------------------------------------------------------------------------------

#: Parameters a calibration fits for one runtime (rates in FLOP/s or B/s, overheads in seconds).
PARAM_NAMES = (
    "gemm_fp32", "gemm_int8", "bmm_fp32", "ew", "transc", "softmax", "norm", "bw_dram", "bw_cache", "bw_move", "overlap_p",
    "t_op", "t_free", "t_attn", "t_call",
)  # fmt: skip
#: Rates that scale with the fp32 SIMD peak when moving to a device.
FP32_RATES = ("gemm_fp32", "bmm_fp32", "ew", "transc", "softmax", "norm")


@dataclass
class Machine:
    """Effective rates the roofline uses for one target (device or host) and one runtime."""

    gemm_fp32: float  # FLOP/s, activation x constant weights
    gemm_int8: float  # int8 op/s (dynamic quantisation: int8 x int8 -> int32)
    bmm_fp32: float  # FLOP/s, activation x activation (attention scores / context)
    ew: float  # nominal op/s, element-wise arithmetic, casts, reductions, (de)quantisation
    transc: float  # nominal op/s, GELU / erf / tanh / exp
    softmax: float  # nominal op/s
    norm: float  # nominal op/s, fused layer norms
    bw_dram: float  # B/s, weights
    bw_cache: float  # B/s, activations
    bw_move: float  # B/s, data-movement ops (transpose, gather, concat, slice)
    #: compute / memory overlap: time = (compute^p + memory^p)^(1/p); p=1 adds them, p -> inf is the pure roofline max
    overlap_p: float
    t_op: float  # s, dispatch overhead of every op
    t_free: float  # s, overhead of a reshape-like op
    t_attn: float  # s, extra fixed overhead of an attention / batched-MatMul op
    t_call: float  # s, per inference call
    #: Last-level cache bytes available to keep weights between inferences (0: weights always stream from DRAM).
    cache_bytes: float = 0.0

    def rate(self, kind: str, precision: str) -> float:
        if kind in ("gemm", "bmm") and precision == "int8":
            return self.gemm_int8
        if kind == "gemm":
            return self.gemm_fp32
        if kind == "bmm":
            return self.bmm_fp32
        return float(getattr(self, kind))

    @classmethod
    def from_params(cls, params: dict[str, float], cache_bytes: float = 0.0) -> Machine:
        return cls(**{k: float(params[k]) for k in PARAM_NAMES}, cache_bytes=cache_bytes)

    def weight_hit(self, costs: list[OpCost]) -> float:
        """Share of weight reads served by the last-level cache: min(1, cache / total weight bytes)."""
        total = sum(op.weight_bytes for op in costs)
        return 1.0 if total <= 0 else min(1.0, self.cache_bytes / total)


def roofline(compute: float, memory: float, p: float) -> float:
    """Soft roofline: (compute^p + memory^p)^(1/p), between their sum (p=1) and their max (p large)."""
    hi = max(compute, memory)
    if hi <= 0.0:
        return 0.0
    lo = min(compute, memory)
    return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)


def op_time_s(op: OpCost, m: Machine, hit: float = 0.0) -> tuple[float, str]:
    """Seconds for one op on machine `m` (a share `hit` of weight bytes from cache), and what bounds it."""
    total, compute, memory = 0.0, 0.0, 0.0
    for p in op.parts:
        tc = p.flops / m.rate(p.kind, p.precision) if p.flops else 0.0
        act_bw = m.bw_move if p.kind == "memory" else m.bw_cache
        tm = p.weight_bytes * (hit / m.bw_cache + (1.0 - hit) / m.bw_dram) + p.act_bytes / act_bw
        total += roofline(tc, tm, m.overlap_p)
        compute += tc
        memory += tm
    overhead = m.t_free if op.free else m.t_op + (m.t_attn if any(p.kind == "bmm" for p in op.parts) else 0.0)
    bound = "overhead" if overhead >= total else ("compute" if compute >= memory else "memory")
    return total + overhead, bound


def predict_s(costs: list[OpCost], m: Machine) -> float:
    """Seconds for one inference (every op + the per-call overhead)."""
    hit = m.weight_hit(costs)
    return m.t_call + sum(op_time_s(op, m, hit)[0] for op in costs)


# ---------------------------------------------------------------------------------------------
# Targets: nominal peaks of a device profile or of this host
# ---------------------------------------------------------------------------------------------


@dataclass
class Nominal:
    """Nominal peaks of the cores a target uses (FLOP/s, op/s) and where each figure comes from."""

    name: str
    fp32: float
    int8: float
    ghz: float  # clock of the fastest core used (scales per-op overheads)
    bw_dram: float | None
    cores: list[dict[str, Any]]
    sources: dict[str, str]


def lookup_microarch(text: str) -> MicroArch | None:
    low = text.lower()
    for pattern, entry in MICROARCH_TABLE:
        if re.search(pattern, low):
            return entry
    return None


def device_nominal(profile, threads: int) -> Nominal:
    """Nominal fp32/int8 peak of the profile's `threads` fastest cores; `UserError` if figures are missing."""
    tp = profile.throughput
    cores: list[dict[str, Any]] = []
    missing = []
    for cl in profile.cpu_clusters:
        entry = lookup_microarch(cl.microarchitecture)
        if tp.fp32_gflops_per_core:
            fp32 = tp.fp32_gflops_per_core * 1e9
            src = profile.sources.get("fp32_gflops_per_core", "profile throughput.fp32_gflops_per_core")
        elif entry is not None:
            fp32 = entry.fp32_flops_per_cycle * cl.ghz * 1e9
            src = f"{entry.name}: {entry.fp32_flops_per_cycle:g} FLOPs/cycle x {cl.ghz} GHz ({entry.source})"
        else:
            missing.append(cl.microarchitecture)
            continue
        if tp.int8_gops_per_core:
            int8 = tp.int8_gops_per_core * 1e9
            isrc = profile.sources.get("int8_gops_per_core", "profile throughput.int8_gops_per_core")
        elif entry is not None and cl.dot_product:
            int8 = entry.int8_ops_per_cycle_dot * cl.ghz * 1e9
            isrc = f"{entry.name} with SDOT: {entry.int8_ops_per_cycle_dot:g} int8 ops/cycle x {cl.ghz} GHz ({entry.source})"
        else:
            int8 = INT8_NO_DOT_FACTOR * fp32
            isrc = f"no dot product: {INT8_NO_DOT_FACTOR:g} x fp32 ({INT8_NO_DOT_SOURCE})"
        cores += [
            {"microarchitecture": cl.microarchitecture, "ghz": cl.ghz, "fp32": fp32, "int8": int8, "fp32_source": src, "int8_source": isrc}
        ] * cl.cores
    if missing:
        raise UserError(
            f"device profile '{profile.name}' has no compute figure for cores {', '.join(sorted(set(missing)))}: the microarchitecture is "
            "not in edgekit's FLOPs/cycle table; add throughput.fp32_gflops_per_core (and int8_gops_per_core) with a source to the profile"
        )
    if not profile.throughput.memory_bandwidth_gbs:
        raise UserError(
            f"device profile '{profile.name}' lacks throughput.memory_bandwidth_gbs, which the latency estimate needs; "
            "add it (GB/s, with a public source under sources) to the profile YAML"
        )
    cores.sort(key=lambda c: c["fp32"], reverse=True)
    used = cores[: max(1, min(threads, len(cores)))]
    sources = {
        "fp32_per_core": "; ".join(dict.fromkeys(c["fp32_source"] for c in used)),
        "int8_per_core": "; ".join(dict.fromkeys(c["int8_source"] for c in used)),
        "memory_bandwidth_gbs": profile.sources.get("memory_bandwidth_gbs", "device profile"),
        "cores_used": f"the {len(used)} fastest cores for threads={threads}: "
        + ", ".join(f"{c['microarchitecture']} @ {c['ghz']} GHz" for c in used),
    }
    return Nominal(
        name=profile.name,
        fp32=sum(c["fp32"] for c in used),
        int8=sum(c["int8"] for c in used),
        ghz=max(c["ghz"] for c in used),
        bw_dram=profile.throughput.memory_bandwidth_gbs * 1e9,
        cores=used,
        sources=sources,
    )


def device_machine(
    host_params: dict[str, float], host_nominal: Nominal, device: Nominal, parallel: float = 1.0
) -> tuple[Machine, dict[str, float]]:
    """Scale host-calibrated rates to a device: efficiency (host rate / host nominal) x device nominal x `parallel`."""
    eff = {k: host_params[k] / host_nominal.fp32 for k in FP32_RATES}
    eff["gemm_int8"] = host_params["gemm_int8"] / host_nominal.int8
    clock = host_nominal.ghz / device.ghz
    simd = parallel * device.fp32 / host_nominal.fp32  # on-core (cache) bandwidth scales with the SIMD peak
    values = {k: eff[k] * device.fp32 * parallel for k in FP32_RATES}
    values["gemm_int8"] = eff["gemm_int8"] * device.int8 * parallel
    values["bw_dram"] = (device.bw_dram or 0) * DEVICE_DRAM_EFFICIENCY
    values["bw_cache"] = host_params["bw_cache"] * simd
    values["overlap_p"] = host_params["overlap_p"]
    values["bw_move"] = host_params["bw_move"] * simd
    for k in ("t_op", "t_free", "t_attn", "t_call"):
        values[k] = host_params[k] * clock
    return Machine.from_params(values), eff


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass
class OpEstimate:
    name: str
    op_type: str
    precision: str
    flops: float
    bytes: float
    ms: float
    bound: str


@dataclass
class Estimate:
    """Predicted latency of one artifact on one target, with its per-op breakdown and assumptions."""

    artifact: str
    format: str
    precision: str
    target: str
    runtime: str
    threads: int
    seq_len: int
    total_ms: float
    per_op: list[OpEstimate]
    by_op_type: dict[str, float]
    flops: float
    bytes: float
    method: str
    provenance: str
    assumptions: dict[str, dict[str, Any]]
    calibration: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def top_ops(self, n: int = 10) -> list[OpEstimate]:
        return sorted(self.per_op, key=lambda o: o.ms, reverse=True)[:n]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_ops"] = [asdict(o) for o in self.top_ops()]
        return data


METHOD = (
    "roofline per op over the graph the runtime executes (batch 1, given seq len): time = (compute^p + memory^p)^(1/p) per op part "
    "+ per-op overhead, summed, + per-call overhead; compute = FLOPs / fitted rate (GEMM fp32/int8, batched MatMul, element-wise, "
    "GELU, softmax, layer norm), memory = weight bytes / DRAM bandwidth (LLC-resident share / cache bandwidth) + activation bytes "
    "/ cache bandwidth; rates, bandwidths, overlap p and overheads fitted on synthetic micro-benchmarks run on this host in the same "
    "runtime and thread count (none of them a validated model)"
)
METHOD_DEVICE = (
    "; device = host efficiency (fitted rate / host nominal peak) x device nominal peak (its fastest `threads` cores x GHz x "
    "FLOPs/cycle of the microarchitecture, int8 x4 via SDOT/UDOT when the cores have it, else x2), DRAM bandwidth = profile figure "
    "x {eff}, weights assumed to stream from DRAM, multi-core efficiency {par} (assumed), overheads scaled by host/device clock"
)


def _runtime_for(fmt: str) -> str:
    if fmt == "onnx":
        return "onnxruntime"
    if fmt == "tflite":
        return "litert"
    if fmt == "coreml":
        raise UserError(
            "latency estimation does not cover Core ML artifacts (Core ML's CPU/GPU/ANE scheduling is not modelled); "
            "estimate the ONNX or TFLite artifact of the same model instead"
        )
    raise UserError(f"unknown format '{fmt}' for latency estimation; use onnx or tflite")


def op_costs(artifact_path: str | os.PathLike[str], fmt: str, seq_len: int | None = None) -> tuple[list[OpCost], int]:
    """Per-op costs of an artifact and the sequence length they were computed at."""
    _runtime_for(fmt)
    path = Path(artifact_path)
    if not path.exists():
        raise UserError(f"artifact {path} does not exist; export it first (edgekit export)")
    if fmt == "onnx":
        seq = int(seq_len or 128)
        return onnx_op_costs(path, seq), seq
    costs, static = tflite_op_costs(path)
    if seq_len is not None and static is not None and int(seq_len) != static:
        raise UserError(f"{path.name} is a static TFLite model for seq_len {static}, not {seq_len}; estimate it at {static} or re-export")
    return costs, int(static or seq_len or 0)


def estimate_artifact(
    artifact_path: str | os.PathLike[str],
    fmt: str,
    precision: str,
    profile: Any = "host",
    threads: int | None = None,
    seq_len: int | None = None,
    *,
    recalibrate: bool = False,
) -> Estimate:
    """Predict the latency of an artifact on `profile` (a `DeviceProfile`, a profile name, or "host").

    `threads` defaults to the profile's thread count (host: min(4, host cores)); `seq_len` to the
    profile's (ONNX only; a TFLite artifact is static). Host calibration is cached (see
    `edgekit.verify.host_peaks`); `recalibrate=True` measures it again.
    """
    from edgekit.profiles import DeviceProfile, load_profile
    from edgekit.verify import host_peaks

    runtime = _runtime_for(fmt)
    if isinstance(profile, str) and profile != "host":
        profile = load_profile(profile)
    is_host = isinstance(profile, str)
    if not is_host and not isinstance(profile, DeviceProfile):
        raise UserError("profile must be a DeviceProfile, a device name or 'host'")
    cores = os.cpu_count() or 1
    threads = int(threads or (min(4, cores) if is_host else profile.threads))
    if threads <= 0:
        raise UserError(f"threads must be positive, got {threads}")
    device_nom = None if is_host else device_nominal(profile, threads)  # raises before any measuring
    if seq_len is None and not is_host:
        seq_len = profile.seq_len
    costs, seq = op_costs(artifact_path, fmt, seq_len)

    # Devices: per-core efficiencies from the 1-thread calibration (CPU-time based, so robust on a busy host);
    # multi-core scaling is an explicit assumption (PARALLEL_EFFICIENCY) rather than this host's own scaling.
    host_threads = max(1, min(threads, cores)) if is_host else 1
    cal = host_peaks.host_calibration(runtime, host_threads, force=recalibrate)
    host_nom = host_peaks.host_nominal(host_threads, cal)
    params = cal["params"]
    assumptions: dict[str, dict[str, Any]] = {
        "host_nominal_fp32_gflops": {"value": host_nom.fp32 / 1e9, "source": host_nom.sources["fp32_per_core"]},
        "host_nominal_int8_gops": {"value": host_nom.int8 / 1e9, "source": host_nom.sources["int8_per_core"]},
        "host_clock_ghz": {"value": host_nom.ghz, "source": host_nom.sources["clock"]},
        "host_fitted": {
            "value": {k: params[k] for k in PARAM_NAMES},
            "unit": "FLOP/s, B/s, s",
            "source": f"micro-benchmarks in {runtime} {cal['runtime_version']} at {host_threads} thread(s), "
            f"fit error {cal['fit_rms_log_error']:.3f} (rms log)",
        },
    }
    notes: list[str] = []
    if is_host:
        machine = Machine.from_params(params, cache_bytes=host_peaks.host_cache_bytes(cal))
        target, provenance = "host", ESTIMATED_HOST
        method = METHOD
        if threads != host_threads:
            notes.append(f"host has {cores} cores: estimated at {host_threads} threads")
    else:
        parallel = 1.0 if threads == 1 else PARALLEL_EFFICIENCY
        machine, eff = device_machine(params, host_nom, device_nom, parallel)
        target, provenance = profile.name, ESTIMATED_DEVICE
        method = METHOD + METHOD_DEVICE.format(eff=DEVICE_DRAM_EFFICIENCY, par=PARALLEL_EFFICIENCY)
        loose = set(cal.get("unconstrained", []))
        assumptions |= {
            "efficiency": {
                "value": {k: v for k, v in eff.items() if k not in loose},
                "source": "host fitted rate (1 thread) / host nominal peak (1 core), assumed to carry over to the device's kernels",
            },
            "device_nominal_fp32_gflops": {"value": device_nom.fp32 / 1e9, "source": device_nom.sources["fp32_per_core"]},
            "device_nominal_int8_gops": {"value": device_nom.int8 / 1e9, "source": device_nom.sources["int8_per_core"]},
            "device_cores_used": {"value": threads, "source": device_nom.sources["cores_used"]},
            "device_dram_bandwidth_gbs": {
                "value": machine.bw_dram / 1e9,
                "source": f"{device_nom.bw_dram / 1e9:g} GB/s ({device_nom.sources['memory_bandwidth_gbs']}) "
                f"x {DEVICE_DRAM_EFFICIENCY} ({DEVICE_DRAM_SOURCE})",
            },
            "overhead_scaling": {"value": host_nom.ghz / device_nom.ghz, "source": "per-op/per-call overheads x host GHz / device GHz"},
            "parallel_efficiency": {
                "value": parallel,
                "source": f"{PARALLEL_SOURCE}; the used cores' peaks are summed (work spread over all threads, dynamic scheduling)",
            },
        }
    if precision == "fp16":
        notes.append("fp16 costed with fp32 compute rates (TFLite fp16 expands weights to fp32 at load; ORT CPU fp16 kernels vary)")
    per_op = [OpEstimate("(runtime call)", "(call overhead)", "-", 0.0, 0.0, machine.t_call * 1e3, "overhead")]
    hit = machine.weight_hit(costs)
    for op in costs:
        secs, bound = op_time_s(op, machine, hit)
        per_op.append(OpEstimate(op.name, op.op_type, op.precision, op.flops, op.bytes, secs * 1e3, bound))
    by_type: dict[str, float] = defaultdict(float)
    for o in per_op:
        by_type[o.op_type] += o.ms
    unknown = sorted({op.op_type for op in costs if op.note.startswith("unknown")})
    if unknown:
        notes.append("ops costed by bytes only (no FLOP rule): " + ", ".join(unknown))
    total = sum(o.ms for o in per_op)
    return Estimate(
        artifact=Path(artifact_path).name,
        format=fmt,
        precision=precision,
        target=target,
        runtime=f"{runtime} {cal['runtime_version']}",
        threads=threads,
        seq_len=seq,
        total_ms=total,
        per_op=per_op,
        by_op_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        flops=sum(op.flops for op in costs),
        bytes=sum(op.bytes for op in costs),
        method=method,
        provenance=provenance,
        assumptions=assumptions,
        calibration={k: cal[k] for k in ("key", "created_utc", "seconds", "fit_rms_log_error", "runtime_version", "threads")},
        notes=notes,
    )


def mape(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Median and max absolute percentage error of (predicted, measured) pairs."""
    errs = [abs(p - m) / m * 100 for p, m in pairs if m > 0 and math.isfinite(p)]
    return (float(np.median(errs)), float(max(errs))) if errs else (math.nan, math.nan)


#: The estimator's last validation, treating the host as the device: predicted vs measured host latency
#: (`python bench/estimator.py`, 1 thread, 36 points: tiny / small / the teacher x ONNX, TFLite x fp32, int8 x
#: seq 32, 64, 128; calibration on synthetic micro-benchmarks only). Re-run the bench and update when the
#: method changes. This says nothing yet about the host -> device transfer, which needs device measurements.
VALIDATION = {
    "command": "python bench/estimator.py",
    "date": "2026-11-22",
    "points": 36,
    "threads": 1,
    "median_abs_error_pct": 8.0,
    "max_abs_error_pct": 17.7,
    "scope": "host treated as the device; host-to-device transfer not validated (no device measurements yet)",
}
