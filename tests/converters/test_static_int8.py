"""`int8-static` (int8 weights and calibrated int8 activations) in ONNX and TFLite, on tiny seeded models.

Each artifact is calibrated on sample texts and checked on other, held-out texts: the graph must
really carry int8 activations, the notes must name the float fallbacks and the calibration, and
the output must stay close to the torch module.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from converters._outlier_split import OUTLIER_SCOPE, split_outlier_channels
from converters.base import get_converter
from edgekit.model import load_teacher
from edgekit.verify.fidelity import cosine_rows

SEQ = 24
CALIBRATION = 48
HELD_OUT = 24
#: Minimum mean cosine vs torch on held-out texts. Measured on these tiny models: >= 0.9999 in both
#: formats (their random layers are gentle); quantizing every op of the TFLite graph statically (the
#: naive full-integer route) measures 0.957 (bert) / 0.995 (distilbert), so the bar separates the two
#: (see test_naive_full_static_tflite_misses_the_bar). The real teacher: ~0.995 (bench/static_int8.py).
MIN_MEAN_COSINE = {"onnx": 0.999, "tflite": 0.999}
MODELS = ("bert-embedding", "distilbert-embedding")


@pytest.fixture(scope="module")
def exported(tiny_model_dirs, sample_texts, tmp_path_factory):
    """(format, model) -> (teacher, held-out inputs, artifact), lowered on first use."""
    cache = {}

    def get(fmt: str, name: str):
        if (fmt, name) not in cache:
            teacher = load_teacher(tiny_model_dirs[name])
            calib = teacher.tokenize(sample_texts[:CALIBRATION], SEQ)
            held_out = teacher.tokenize(sample_texts[CALIBRATION : CALIBRATION + HELD_OUT], SEQ)
            spec = teacher.export_spec("int8-static", calib, calibration=CALIBRATION)
            art = get_converter(fmt).lower(teacher.module, spec, tmp_path_factory.mktemp(f"{fmt}-{name}"))
            cache[(fmt, name)] = (teacher, held_out, art)
        return cache[(fmt, name)]

    return get


def _held_out_cosine(fmt: str, teacher, inputs, art) -> np.ndarray:
    runtime = get_converter(fmt).runtime(art, threads=1)
    n = len(inputs["input_ids"])
    got = np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[teacher.output_name] for i in range(n)])
    return cosine_rows(teacher.run(inputs), got)


def test_outlier_split_is_exact_in_float(tiny_model_dirs, sample_texts):
    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    calib = teacher.tokenize(sample_texts[:8], SEQ)
    rows = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(8)]
    split, chosen = split_outlier_channels(teacher.module, rows, k=4)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in teacher.module.modules())
    assert len(chosen) == n_linear and all(len(v) == 4 for v in chosen.values())
    held = teacher.tokenize(sample_texts[8:16], SEQ)
    with torch.no_grad():
        feed = {k: torch.from_numpy(v) for k, v in held.items()}
        np.testing.assert_allclose(split(**feed).numpy(), teacher.module(**feed).numpy(), atol=1e-5)


def test_outlier_split_picks_a_planted_outlier_channel(tiny_model_dirs, sample_texts):
    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    module = teacher.module
    with torch.no_grad():  # FFN neuron 3 of layer 0 fires ~50x harder: its GELU output is an outlier input channel
        dense = module.encoder.encoder.layer[0].intermediate.dense
        dense.weight[3] *= 50.0
        dense.bias[3] = 50.0
    calib = teacher.tokenize(sample_texts[:8], SEQ)
    rows = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(8)]
    _, chosen = split_outlier_channels(module, rows, k=2)
    assert 3 in chosen["encoder.encoder.layer.0.output.dense"]


def test_naive_full_static_tflite_misses_the_bar(tiny_model_dirs, sample_texts, tmp_path, monkeypatch):
    """Every op quantized statically (mask ADD, SOFTMAX, LayerNorm included): the fidelity test would fail."""
    from ai_edge_quantizer import recipe

    import converters._tflite_static as tflite_static

    monkeypatch.setattr(tflite_static, "_recipe", recipe.static_wi8_ai8)
    monkeypatch.setattr(tflite_static, "OUTLIER_CHANNELS", 0)
    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    calib = teacher.tokenize(sample_texts[:CALIBRATION], SEQ)
    held_out = teacher.tokenize(sample_texts[CALIBRATION : CALIBRATION + HELD_OUT], SEQ)
    art = get_converter("tflite").lower(teacher.module, teacher.export_spec("int8-static", calib, calibration=CALIBRATION), tmp_path)
    assert _held_out_cosine("tflite", teacher, held_out, art).mean() < MIN_MEAN_COSINE["tflite"]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_int8_static_has_int8_activations_and_matches_torch(exported, name):
    teacher, held_out, art = exported("onnx", name)
    assert art.precision == "int8-static"
    model = onnx.load(str(art.path))
    inits = {i.name for i in model.graph.initializer}
    # activations (not just weights) pass through QuantizeLinear: a QDQ pair on a non-constant tensor
    q_acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert q_acts, "no activation is quantized"
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in dq_out and n.input[1] in dq_out]
    assert len(int8_matmuls) >= 4 * 2  # Q, K, V, O, FFN in, FFN out per layer (2 layers); at least 4 each
    notes = " | ".join(art.notes)
    assert "calibration: MinMax" in notes
    assert "float fallbacks:" in notes and "Softmax" in notes
    assert all(OUTLIER_SCOPE in n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    # the word-embedding table is stored as 8-bit (behind a DequantizeLinear) and still accounted as embeddings
    assert 30522 * 32 <= art.embedding_bytes < 30522 * 32 * 2 and art.embedding_bytes < art.size_bytes()
    cos = _held_out_cosine("onnx", teacher, held_out, art)
    assert cos.mean() >= MIN_MEAN_COSINE["onnx"], f"{name}: mean cosine {cos.mean():.4f} (min {cos.min():.4f})"


@pytest.mark.parametrize("name", MODELS)
def test_tflite_int8_static_has_int8_activations_and_matches_torch(exported, name):
    from converters._tflite_static import int8_activation_ops

    teacher, held_out, art = exported("tflite", name)
    assert [t.dtype for t in art.inputs] == ["int32"] * len(teacher.input_names)
    assert [t.dtype for t in art.outputs] == ["float32"]
    assert art.ops.get("QUANTIZE", 0) > 0 and art.ops.get("DEQUANTIZE", 0) > 0
    quantized, floating = int8_activation_ops(art.path.read_bytes())
    assert quantized.get("FULLY_CONNECTED", 0) >= 4 * 2, quantized
    assert "SOFTMAX" in floating and "FULLY_CONNECTED (outlier channels)" in floating
    notes = " | ".join(art.notes)
    assert "float fallbacks:" in notes and "SOFTMAX" in notes and "calibration:" in notes
    cos = _held_out_cosine("tflite", teacher, held_out, art)
    assert cos.mean() >= MIN_MEAN_COSINE["tflite"], f"{name}: mean cosine {cos.mean():.4f} (min {cos.min():.4f})"


def test_int8_static_is_a_known_precision_and_coreml_refuses_it():
    from edgekit.errors import UserError
    from edgekit.recipe import PRECISION_MEANINGS

    assert "int8-static" in PRECISION_MEANINGS
    for fmt in ("onnx", "tflite"):
        get_converter(fmt).check_precision("int8-static")
    with pytest.raises(UserError, match="int8-static"):
        get_converter("coreml").check_precision("int8-static")
