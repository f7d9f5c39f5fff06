"""Weight-only precisions (`int8-weights`, `int4-weights`) in every format, on the tiny seeded BERT.

For each format x precision: the stored weights are int8 / int4 (ops and tensor dtypes say so), the
file is smaller than fp32 by a measured factor, and the artifact in its runtime (onnxruntime, LiteRT,
the MIL reference interpreter for Core ML on Linux) stays close to the torch model.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.fidelity import cosine_rows

SEQ = 24
HIDDEN = 64
N_TEXTS = 8
FORMATS = ("onnx", "tflite", "coreml")
WEIGHT_ONLY = ("int8-weights", "int4-weights")
#: minimum (mean, min) cosine vs torch on the tiny model (measured: int8 >= 0.99998, int4 ~0.996-0.999)
MIN_COSINE = {"int8-weights": (0.9995, 0.999), "int4-weights": (0.98, 0.97)}
#: largest size as a fraction of the same format's fp32 file (tiny model: the 30522 x 64 word table dominates).
#: Measured: int8 0.26-0.31, int4 0.15-0.18.
MAX_SIZE_FRACTION = {"int8-weights": 0.34, "int4-weights": 0.22}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    # hidden 64 (not the shared fixtures' 32): every weight matrix reaches Core ML's 2048-element threshold
    return load_teacher(build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "bert64", "bert", "embedding", seed=0, hidden=HIDDEN))


@pytest.fixture(scope="module")
def inputs(teacher, sample_texts):
    return teacher.tokenize(sample_texts[:N_TEXTS], SEQ)


@pytest.fixture(scope="module")
def lowered(teacher, inputs, tmp_path_factory):
    """`lowered(format, precision, **spec) -> Artifact`, each combination exported once per module."""
    cache = {}

    def get(fmt: str, precision: str, **extra):
        key = (fmt, precision, tuple(sorted(extra.items())))
        if key not in cache:
            spec = teacher.export_spec(precision, inputs, **extra)
            cache[key] = get_converter(fmt).lower(teacher.module, spec, tmp_path_factory.mktemp(f"{fmt}-{precision}"))
        return cache[key]

    return get


def _run(fmt, art, inputs, name):
    runtime = get_converter(fmt).runtime(art, threads=1)
    return np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[name] for i in range(N_TEXTS)])


@pytest.mark.parametrize("precision", WEIGHT_ONLY)
@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_only_is_smaller_and_close_to_torch(fmt, precision, teacher, inputs, lowered):
    art = lowered(fmt, precision)
    assert art.precision == precision
    fp32 = lowered(fmt, "fp32").size_bytes()
    fraction = art.size_bytes() / fp32
    assert fraction <= MAX_SIZE_FRACTION[precision], f"{fmt} {precision}: {fraction:.3f} of fp32"
    got = _run(fmt, art, inputs, teacher.output_name)
    cos = cosine_rows(teacher.run(inputs), got)
    mean_min, min_min = MIN_COSINE[precision]
    assert cos.mean() >= mean_min and cos.min() >= min_min, f"{fmt} {precision}: cosine mean {cos.mean():.5f} min {cos.min():.5f}"
    assert any(precision in note for note in art.notes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_int4_is_smaller_than_int8(fmt, lowered):
    assert lowered(fmt, "int4-weights").size_bytes() < 0.7 * lowered(fmt, "int8-weights").size_bytes()


# ---------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("precision,bits", [("int8-weights", 8), ("int4-weights", 4)])
def test_onnx_matmuls_are_matmulnbits_and_tables_are_block_quantized(precision, bits, lowered):
    import onnx
    from onnx import TensorProto

    art = lowered("onnx", precision)
    model = onnx.load(str(art.path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(nbits) == 12  # 2 layers x (Q, K, V, attention output, FFN up, FFN down)
    assert all(attrs(n)["bits"] == bits and attrs(n)["accuracy_level"] == 1 for n in nbits)
    # K = 64 (hidden) / 256 (FFN): int4 blocks of 32; int8 asks for 128, the largest power of two dividing every K is 64
    assert {attrs(n)["block_size"] for n in nbits} == {32 if bits == 4 else 64}
    # no float weight left behind a MatMul, no packed-QKV Attention or EmbedLayerNormalization holding fp32 weights
    assert not [n for n in nodes if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    assert not [n for n in nodes if n.op_type in ("Attention", "EmbedLayerNormalization")]
    tables = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    assert len(tables) >= 2  # word + position (+ token type)
    word = max(tables, key=lambda n: inits[n.input[0]].dims[0])
    assert list(inits[word.input[0]].dims) == [30522, HIDDEN]
    assert inits[word.input[0]].data_type == (TensorProto.UINT8 if bits == 8 else TensorProto.UINT4)  # + zero points
    assert attrs(word).get("bits", 4) == bits
    assert not [n for n in nodes if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    assert art.embedding_bytes < 30522 * HIDDEN * (1.2 if bits == 8 else 0.7)


# ---------------------------------------------------------------------------------------------- TFLite


@pytest.mark.parametrize("precision,dtype", [("int8-weights", "INT8"), ("int4-weights", "INT4")])
def test_tflite_weights_are_int_behind_dequantize(precision, dtype, lowered):
    from converters._tflite_weight_only import quantized_weights
    from converters.tflite import _Flatbuffer

    art = lowered("tflite", precision)
    data = art.path.read_bytes()
    info = quantized_weights(data)
    assert info["by_type"] == {dtype: 13}  # 12 FULLY_CONNECTED weights + the word embedding table
    assert info["consumers"] == {"FULLY_CONNECTED": 12, "EMBEDDING_LOOKUP": 1}
    assert info["channelwise"] == 13
    assert info["asymmetric"] == (13 if dtype == "INT4" else 0)  # int4: per-channel zero points; int8: symmetric
    assert not info["float_left"]
    # every FULLY_CONNECTED weight comes out of a DEQUANTIZE: float compute, activations never quantized
    fb = _Flatbuffer(data)
    produced_by = {}
    for _, op, name in fb.operators():
        for k in range(op.OutputsLength()):
            produced_by[op.Outputs(k)] = name
    fc = [op for _, op, name in fb.operators() if name == "FULLY_CONNECTED"]
    assert fc and all(produced_by.get(op.Inputs(1)) == "DEQUANTIZE" for op in fc)
    assert art.ops["DEQUANTIZE"] == 13 and "QUANTIZE" not in art.ops


# ---------------------------------------------------------------------------------------------- Core ML


@pytest.mark.parametrize("precision,op,dtype", [
    ("int8-weights", "constexpr_affine_dequantize", "int8"),
    ("int4-weights", "constexpr_blockwise_shift_scale", "int4"),
])
def test_coreml_weights_are_constexpr_int(precision, op, dtype, teacher, lowered):
    from converters.coreml import inspect_package, weight_roundtrip

    art = lowered("coreml", precision)
    info = inspect_package(art.path)
    assert info.ops.get(op, 0) == 13  # 12 linear weights + the word embedding table
    compressed = {n: c for n, c in info.program.const_info.items() if c.op_type == op}
    assert {c.dtype for c in compressed.values()} == {dtype}
    if dtype == "int4":  # one scale per block of 32 input channels
        for c in compressed.values():
            scale = c.params["scale"]
            assert scale.shape == (c.shape[0], c.shape[1] // 32), (c.name, scale.shape, c.shape)
    roundtrip = weight_roundtrip(art, teacher.module)
    assert roundtrip.by_dtype().get(dtype) == 13
    assert roundtrip.all_within_bounds(), roundtrip.summary()


def test_coreml_int4_raises_an_older_deployment_target_and_says_so(lowered):
    art = lowered("coreml", "int4-weights", deployment_target="iOS16")
    assert art.notes[0].startswith("deployment target iOS18")
    assert any("raised from iOS16" in n for n in art.notes)
    int8 = lowered("coreml", "int8-weights", deployment_target="iOS17")
    assert int8.notes[0].startswith("deployment target iOS17")


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the runtime is Core ML itself")
def test_coreml_fidelity_runs_through_the_mil_reference(lowered):
    art = lowered("coreml", "int4-weights")
    assert get_converter("coreml").runtime(art, threads=1).provenance == "mil-reference-host"


# ---------------------------------------------------------------------------------------------- refusals


class _EarlyExitStandIn(torch.nn.Module):
    """Anything with `segments()` is lowered as an early-exit model."""

    def segments(self):  # pragma: no cover - never reached
        raise AssertionError


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_early_exit_weight_only_is_refused_not_exported_as_float(fmt, teacher, inputs, tmp_path):
    spec = teacher.export_spec("int4-weights", inputs)
    with pytest.raises(UserError, match="not implemented for early-exit"):
        get_converter(fmt).lower(_EarlyExitStandIn(), spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_bit_widths_are_refused(fmt):
    with pytest.raises(UserError, match="cannot export precision 'int2-weights'"):
        get_converter(fmt).check_precision("int2-weights")


def test_coreml_early_exit_takes_weight_only_too(tmp_path, sample_texts):
    """Core ML quantizes the whole program after conversion, so the `cond` branches get int4 weights as well."""
    from converters.base import EXIT_LAYER
    from edgekit.dynamic import EarlyExitModel

    teacher = load_teacher(build_tiny_model_dir(tmp_path / "m", "bert", "embedding", seed=0, hidden=HIDDEN, layers=4, heads=4))
    inputs = teacher.tokenize(sample_texts[:2], SEQ)
    model = EarlyExitModel(teacher.module, [1, 3], "confidence", threshold=2.0).eval()  # never exits early: all layers
    spec = teacher.export_spec("int4-weights", inputs)
    spec.output_names = [teacher.output_name, EXIT_LAYER]
    art = get_converter("coreml").lower(model, spec, tmp_path / "out")
    assert art.ops.get("cond") == 2 and art.ops.get("constexpr_blockwise_shift_scale", 0) >= 4 * 6 + 1
    runtime = get_converter("coreml").runtime(art, threads=1)
    for i in range(2):
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        res = runtime.run(row)
        assert np.asarray(res[EXIT_LAYER]).reshape(-1).tolist() == [4]
        with torch.no_grad():
            ref = model.forced(None)(**{k: torch.from_numpy(v) for k, v in row.items()}).numpy()
        assert cosine_rows(np.asarray(res[teacher.output_name]).reshape(ref.shape), ref).min() >= 0.99
