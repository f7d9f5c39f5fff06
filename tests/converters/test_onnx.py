"""ONNX converter on the tiny-model table x every precision, run in onnxruntime."""

import numpy as np
import onnx
import pytest

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.model import load_teacher
from edgekit.verify.fidelity import cosine_rows

SEQ = 24
#: minimum mean cosine vs torch per precision on the tiny models
TOLERANCE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}


@pytest.fixture(scope="module")
def exported(tiny_model_dirs, sample_texts, tmp_path_factory):
    conv = get_converter("onnx")
    results = {}
    for name, path in tiny_model_dirs.items():
        teacher = load_teacher(path)
        inputs = teacher.tokenize(sample_texts[:12], SEQ)
        for precision in ("fp32", "fp16", "int8"):
            spec = teacher.export_spec(precision, inputs, calibration=8)
            art = conv.lower(teacher.module, spec, tmp_path_factory.mktemp(f"{name}-{precision}"))
            results[(name, precision)] = (teacher, inputs, art)
    return results


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding", "bert-classification"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_artifact_runs_in_onnxruntime_and_matches_torch(exported, name, precision):
    teacher, inputs, art = exported[(name, precision)]
    assert [t.name for t in art.inputs] == teacher.input_names
    assert [t.name for t in art.outputs] == [teacher.output_name]
    assert all(t.dtype == "int64" for t in art.inputs)
    model = onnx.load(str(art.path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    runtime = get_converter("onnx").runtime(art, threads=1)
    got = np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[teacher.output_name] for i in range(12)])
    want = teacher.run(inputs)
    cos = cosine_rows(want, got)
    assert cos.mean() >= TOLERANCE[precision], f"{name} {precision}: mean cosine {cos.mean():.6f}"
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=2e-4)
    # int32 inputs from an app are accepted too (cast to the artifact's int64)
    one = runtime.run({k: v[:1].astype(np.int32) for k, v in inputs.items()})[teacher.output_name]
    np.testing.assert_allclose(one, got[:1], atol=1e-6)


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding"])
def test_precisions_shrink_the_file_and_embeddings_are_accounted(exported, name):
    sizes = {p: exported[(name, p)][2].size_bytes() for p in ("fp32", "fp16", "int8")}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    fp32 = exported[(name, "fp32")][2]
    # word embeddings alone: 30522 x 32 fp32
    assert fp32.embedding_bytes >= 30522 * 32 * 4
    assert fp32.embedding_bytes < fp32.size_bytes()


def test_int8_is_dynamic_with_smoothing_chosen_on_calibration_texts(exported):
    art = exported[("bert-embedding", "int8")][2]
    assert art.ops.get("MatMulInteger", 0) + art.ops.get("com.microsoft.QAttention", 0) > 0
    assert any(n.startswith("activation smoothing (SmoothQuant) a=") for n in art.notes)


def test_unknown_precision_is_user_error():
    with pytest.raises(UserError, match="cannot export precision 'int4'"):
        get_converter("onnx").check_precision("int4")
