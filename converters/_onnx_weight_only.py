"""ONNX weight-only precisions (`int8-weights`, `int4-weights`): onnxruntime's MatMulNBits and
GatherBlockQuantized contrib ops, activations and compute in float32.

- Every MatMul with a constant weight becomes `com.microsoft.MatMulNBits` (onnxruntime's
  `MatMulNBitsQuantizer`, RTN), block-wise along K: int4 in blocks of 32 with a zero point per block
  (asymmetric), int8 symmetric in blocks of 128 (MatMulNBits has no per-channel form: block 128 is
  finer than per channel, and its scales cost ~1.6% of the weights). `accuracy_level` 1 = fp32 compute: activations are never quantized.
- Attention: the usual packed-QKV `Attention` fusion would hide Q/K/V inside one fp32 weight that
  MatMulNBits cannot take, so the BERT fusions run with `MultiHeadAttention` instead (Q/K/V stay
  three MatMuls, quantized like the rest; the attention kernel is still fused).
- Embeddings: `EmbedLayerNormalization` fusion is off so the tables stay `Gather`s, which become
  `com.microsoft.GatherBlockQuantized` (int4: onnxruntime's quantizer, uint4 + zero points, blocks of 32
  along the hidden axis; int8: built here, uint8 with zero point 128 per block, as the quantizer only does 4 bits).
- Int4 tensors need opset 21; the quantizer bumps the opset without converting the graph, so the
  few ops whose signature changed since opset 17 (Reduce* `axes` attribute -> input) are rewritten here.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np

#: precision -> (bits, MatMul block size along K, embedding block size along hidden, symmetric)
#: int4 is asymmetric (a 4-bit zero point per block): on all-MiniLM-L6-v2 mean cosine 0.968 vs 0.958 symmetric.
SETTINGS = {"int8-weights": (8, 128, 128, True), "int4-weights": (4, 32, 32, False)}
PRECISIONS = tuple(SETTINGS)
#: MatMulNBits accuracy_level: 1 = fp32 compute (4 would quantize activations to int8 on the fly)
ACCURACY_LEVEL = 1

_REDUCE_AXES_INPUT_SINCE_18 = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSumSquare",
}


def fusion_options():
    """BERT fusions that leave every weight reachable: MultiHeadAttention (separate Q/K/V MatMuls), no EmbedLayerNorm."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False
    options.use_multi_head_attention = True
    return options


def _import_quantizer():
    """`MatMulNBitsQuantizer`, imported without keeping the `logging.basicConfig(level=INFO)` its module runs on import."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    return MatMulNBitsQuantizer


@contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization")]
    root = logging.getLogger()
    saved = [lg.level for lg in loggers] + [root.level]
    for lg in [*loggers, root]:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip([*loggers, root], saved, strict=True):
            lg.setLevel(level)


def _block_for(dim: int, preferred: int) -> int:
    """The preferred block size, or the largest power of two >= 16 dividing `dim` (small test models)."""
    block = preferred
    while block > 16 and dim % block:
        block //= 2
    return block


def _to_opset21(model) -> None:
    """Rewrite ops whose attributes became inputs after opset 17 (Reduce* axes), in place."""
    import onnx
    from onnx import numpy_helper

    def walk(graph) -> None:
        for node in graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type in _REDUCE_AXES_INPUT_SINCE_18:
                axes = [a for a in node.attribute if a.name == "axes"]
                if axes:
                    name = f"{node.name or node.output[0]}_axes"
                    graph.initializer.append(numpy_helper.from_array(np.asarray(list(axes[0].ints), dtype=np.int64), name))
                    node.attribute.remove(axes[0])
                    if len(node.input) == 0:
                        raise ValueError(f"{node.op_type} without data input")
                    node.input.append(name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 21)
    model.ir_version = max(model.ir_version, 10)


def _quantize_gathers_uint8(model, block: int) -> list[str]:
    """Gather on a constant 2-D table -> GatherBlockQuantized(bits=8): uint8 data, zero point 128, fp32 scale per block."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    done: list[str] = []
    for idx, node in enumerate(list(graph.node)):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in inits:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table.ndim != 2 or table.dtype != np.float32 or axis != 0 or users[node.input[0]] != 1:
            continue
        rows, hidden = table.shape
        b = _block_for(hidden, block)
        if hidden % b:
            continue
        blocks = table.reshape(rows, hidden // b, b)
        scale = np.abs(blocks).max(axis=-1) / 127.0
        safe = np.where(scale == 0, 1.0, scale)
        q = (np.clip(np.round(blocks / safe[..., None]), -127, 127).astype(np.int16) + 128).astype(np.uint8)
        base = node.input[0]
        graph.initializer.remove(inits[base])
        graph.initializer.extend([
            numpy_helper.from_array(q.reshape(rows, hidden), f"{base}_Q8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_scales"),
            numpy_helper.from_array(np.full(scale.shape, 128, dtype=np.uint8), f"{base}_zero_points"),
        ])
        new = helper.make_node(
            "GatherBlockQuantized", [f"{base}_Q8", node.input[1], f"{base}_scales", f"{base}_zero_points"], list(node.output),
            name=(node.name or base) + "_Q8", domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=b, bits=8,
        )
        graph.node.remove(node)
        graph.node.insert(idx, new)
        done.append(base)
    return done


def quantize_weight_only(model, precision: str):
    """Weight-only quantize an (optimised) ONNX model in memory; returns (model, notes)."""
    from onnx import numpy_helper

    MatMulNBitsQuantizer = _import_quantizer()  # noqa: N806
    bits, block, emb_block, symmetric = SETTINGS[precision]
    inits = {i.name: i for i in model.graph.initializer}
    ks = [int(inits[n.input[1]].dims[0]) for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
          and len(inits[n.input[1]].dims) == 2]
    block = min(_block_for(k, block) for k in ks) if ks else block
    op_types = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    with _quiet(), np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: the quantizer guards them with where()
        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=ACCURACY_LEVEL,
            op_types_to_quantize=op_types, quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
    out = quantizer.model.model
    gathers_int8 = _quantize_gathers_uint8(out, emb_block) if bits == 8 else []
    _to_opset21(out)

    nodes = list(out.graph.node)
    inits = {i.name: i for i in out.graph.initializer}
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    gbq = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    float_matmuls = [n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    packed_attention = [n.name for n in nodes if n.op_type == "Attention"]
    float_tables = [n.input[0] for n in nodes if n.op_type == "Gather" and n.input[0] in inits
                    and numpy_helper.to_array(inits[n.input[0]]).ndim == 2]
    gather_block = sorted({a.i for n in gbq for a in n.attribute if a.name == "block_size"})
    notes = [
        f"{precision}: weight-only, {len(nbits)} MatMul weights as com.microsoft.MatMulNBits (bits={bits}, "
        f"{'symmetric' if symmetric else 'asymmetric: scale + 4-bit zero point per block'}, block_size={block} along K, "
        f"accuracy_level={ACCURACY_LEVEL}: fp32 compute, activations stay float)",
        f"embedding tables: {len(gbq)} as com.microsoft.GatherBlockQuantized "
        f"({'uint8 + zero point 128' if bits == 8 else 'uint4 + zero points'}, "
        f"block_size={','.join(map(str, gather_block)) or '-'} along hidden)"
        + (f"; fp32: {', '.join(float_tables)}" if float_tables else ""),
        "attention: MultiHeadAttention fusion (Q/K/V kept as separate quantized MatMuls); no EmbedLayerNormalization fusion",
        "stay fp32: biases, LayerNorm parameters"
        + (f", MatMuls {', '.join(float_matmuls)}" if float_matmuls else "")
        + (f", packed QKV of Attention nodes {', '.join(packed_attention)}" if packed_attention else ""),
        "opset 21 (int4 / GatherBlockQuantized need it)",
    ]
    if bits == 8:
        notes.append(f"int8 embedding quantization built by edgekit ({len(gathers_int8)} tables): "
                     "onnxruntime's quantizer only does 4-bit Gather")
    return out, notes
