"""Pruned / factorized models lower to ONNX and TFLite with physically smaller weights and run in
their real runtimes (onnxruntime, LiteRT) matching the transformed PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters.base import ExportSpec, get_converter
from edgekit.verify.fidelity import cosine_rows

SEQ = 32
H, FFN = 64, 256
STEPS = {
    "prune-heads": [("prune-heads", {"ratio": 0.5})],
    "prune-ffn": [("prune-ffn", {"ratio": 0.5})],
    "prune-layers": [("prune-layers", {"keep": 2})],
    "svd": [("svd", {"params": 0.5})],
    "embed-factorize": [("embed-factorize", {"rank": 16})],
    "chain": [
        ("prune-heads", {"ratio": 0.25, "per_layer": False}),
        ("prune-ffn", {"ratio": 0.5, "per_layer": False}),
        ("prune-layers", {"keep": 3}),
        ("svd", {"energy": 0.95, "whiten": True}),
        ("embed-factorize", {"rank": 32}),
    ],
}


def spec(teacher, inputs, stem="model") -> ExportSpec:
    return teacher.export_spec("fp32", inputs, stem=stem)


def initializers(path) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]


def run_artifact(conv, art, inputs, output) -> np.ndarray:
    runtime = conv.runtime(art, 1)
    n = len(inputs["input_ids"])
    return np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[output] for i in range(n)])


@pytest.fixture(scope="module")
def onnx_teachers(helpers, tmp_path_factory):
    conv = get_converter("onnx")
    out = {}
    for name in ("bert-embedding", "distilbert-embedding"):
        h = helpers[name]
        inputs = h.teacher.tokenize(h.texts[:8], SEQ)
        out[name] = conv.lower(h.teacher.module, spec(h.teacher, inputs), tmp_path_factory.mktemp(f"{name}-teacher"))
    return out


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding"])
@pytest.mark.parametrize("pass_name", list(STEPS))
def test_onnx_of_transformed_model_is_smaller_and_matches_torch(helpers, onnx_teachers, tmp_path, name, pass_name):
    h = helpers[name]
    model, _ = h.apply(*STEPS[pass_name])
    inputs = h.teacher.tokenize(h.texts[:8], SEQ)
    conv = get_converter("onnx")
    art = conv.lower(model, spec(h.teacher, inputs), tmp_path)
    got = run_artifact(conv, art, inputs, h.teacher.output_name)
    want = h.run(model, inputs)
    assert cosine_rows(want, got).min() >= 0.9999
    np.testing.assert_allclose(got, want, atol=2e-4)
    weights, base = initializers(art.path), initializers(onnx_teachers[name].path)
    assert sum(a.size for a in weights) < sum(a.size for a in base)
    assert art.size_bytes() < onnx_teachers[name].size_bytes()

    def ffn_matrices(arrays):
        return [a.shape for a in arrays if sorted(a.shape) == [H, FFN]]

    assert ffn_matrices(base)  # the teacher has its 64 x 256 FFN matrices...
    if pass_name in ("prune-ffn", "svd"):
        assert not ffn_matrices(weights)  # ...the transformed graph has none left


def test_tflite_of_pruned_model_is_smaller_and_matches_torch(helpers, tmp_path):
    h = helpers["bert-embedding"]
    model, ctx = h.apply(("prune-ffn", {"ratio": 0.5}), ("prune-layers", {"keep": 2}), ("prune-heads", {"ratio": 0.5}))
    inputs = h.teacher.tokenize(h.texts[:6], SEQ)
    conv = get_converter("tflite")
    base = conv.lower(h.teacher.module, spec(h.teacher, inputs, "teacher"), tmp_path)
    art = conv.lower(model, spec(h.teacher, inputs, "pruned"), tmp_path)
    got = run_artifact(conv, art, inputs, h.teacher.output_name)
    assert cosine_rows(h.run(model, inputs), got).min() >= 0.9999
    saved = ctx.records[0]["params_before"] - ctx.records[-1]["params_after"]
    # fp32 weights: the file shrinks by at least 4 bytes per removed parameter (plus the removed ops' constants)
    assert 4 * saved <= base.size_bytes() - art.size_bytes() <= 1.2 * 4 * saved
