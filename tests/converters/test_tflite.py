"""converters/tflite.py against the real toolchain: litert-torch conversion, ai-edge-quantizer
precisions and the LiteRT interpreter, on tiny seeded models (seconds per conversion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import converters.tflite as tflite
from converters.base import MEASURED_HOST, ExportSpec, get_converter
from converters.tflite import (
    LiteRTRuntime,
    TFLiteConverter,
    check_builtin_ops,
    embedding_table_bytes,
    op_histogram,
)
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.model import Teacher, load_teacher
from edgekit.tiny_models import build_tiny_model_dir

SEQ_LEN = 16
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Battery life on this phone is amazing.",
    "Where is the nearest train station?",
    "Neural networks learn representations from data.",
    "ok",
    "This sentence is long enough that sixteen word pieces will truncate it well before the end.",
    "Is it going to rain tomorrow in London?",
]
#: name -> (kind, task) for `build_tiny_model_dir`
MODELS = {
    "bert-embedding": ("bert", "embedding"),
    "distilbert-embedding": ("distilbert", "embedding"),
    "bert-classification": ("bert", "classification"),
}
PRECISIONS = ("fp32", "fp16", "int8")
#: Mean cosine (artifact in LiteRT vs the torch module) each precision must reach.
MIN_MEAN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Teacher]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: load_teacher(build_tiny_model_dir(root / name, kind, task, seed=0))
            for name, (kind, task) in MODELS.items()}


def make_spec(teacher: Teacher, precision: str, stem: str = "model") -> ExportSpec:
    return teacher.export_spec(precision, teacher.tokenize(TEXTS[:1], SEQ_LEN), stem=stem)


@pytest.fixture(scope="module")
def lowered(teachers, tmp_path_factory):
    """`lowered(model, precision) -> Artifact`, converting each pair once per module."""
    cache = {}

    def get(name: str, precision: str):
        if (name, precision) not in cache:
            workdir = tmp_path_factory.mktemp(f"{name}-{precision}")
            cache[name, precision] = TFLiteConverter().lower(teachers[name].module, make_spec(teachers[name], precision), workdir)
        return cache[name, precision]

    return get


@pytest.fixture(scope="module")
def flex_model() -> bytes:
    """A real TFLite model that needs a Flex op: tf.math.erf has no builtin kernel."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def erf_plus_one(x):
        return {"y": tf.math.erf(x) + 1.0}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([erf_plus_one.get_concrete_function()], erf_plus_one)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    data = conv.convert()
    assert op_histogram(data) == {"ADD": 1, "FlexErf": 1}, "the fixture must really contain a Flex op"
    return data


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(MODELS))
def test_artifact_runs_in_litert_with_named_io_and_matches_torch(name, precision, teachers, lowered):
    from ai_edge_litert.interpreter import Interpreter

    teacher = teachers[name]
    artifact = lowered(name, precision)
    assert artifact.format == "tflite" and artifact.precision == precision
    assert artifact.path.name == "model.tflite" and artifact.path.is_file()
    assert sorted(p.name for p in artifact.path.parent.iterdir()) == ["model.tflite"], "no temp files left behind"

    # The app-facing signature: exactly the model's names, never args_0 / output_0.
    interp = Interpreter(model_path=str(artifact.path))
    assert interp.get_signature_list() == {
        "serving_default": {"inputs": sorted(teacher.input_names), "outputs": [teacher.output_name]}
    }
    runner = interp.get_signature_runner()
    assert set(runner.get_input_details()) == set(teacher.input_names)
    assert list(runner.get_output_details()) == [teacher.output_name]

    # Declared I/O: int32 inputs in the spec's order, static shapes.
    assert [(t.name, t.dtype, t.shape) for t in artifact.inputs] == [(n, "int32", (1, SEQ_LEN)) for n in teacher.input_names]
    width = 32 if teacher.task == "embedding" else 3  # hidden size / num_labels of the tiny models
    assert [(t.name, t.dtype, t.shape) for t in artifact.outputs] == [(teacher.output_name, "float32", (1, width))]

    # Fidelity on real tokenised sentences (int64, as verify feeds them; the runtime casts).
    inputs = teacher.tokenize(TEXTS, SEQ_LEN)
    reference = teacher.run(inputs)
    runtime = TFLiteConverter().runtime(artifact, threads=1)
    got = np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[teacher.output_name]
                          for i in range(len(TEXTS))])
    cos = cosine(got, reference)
    assert cos.mean() >= MIN_MEAN_COSINE[precision], (
        f"{name} {precision}: mean cosine {cos.mean():.6f} < {MIN_MEAN_COSINE[precision]} (min {cos.min():.6f})"
    )
    if precision == "fp32":
        np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-4)

    # Builtin ops only, and the histogram is the file's.
    assert artifact.ops == check_builtin_ops(artifact.path)
    assert not [op for op in artifact.ops if op.startswith("Flex") or op == "CUSTOM"]
    assert "FULLY_CONNECTED" in artifact.ops and "EMBEDDING_LOOKUP" in artifact.ops
    if precision == "fp16":
        assert artifact.ops.get("DEQUANTIZE", 0) > 0  # float16 weights, dequantized for float compute
    else:
        assert "DEQUANTIZE" not in artifact.ops

    # Embedding tables as stored: the word table alone is 30522 x 32 at the precision's width.
    bytes_per_weight = {"fp32": 4, "fp16": 2, "int8": 1}[precision]
    assert artifact.embedding_bytes is not None
    assert 30522 * 32 * bytes_per_weight <= artifact.embedding_bytes < artifact.size_bytes()
    assert artifact.embedding_bytes == embedding_table_bytes(artifact.path)
    assert any(note.startswith(f"{precision}:") for note in artifact.notes)


@pytest.mark.parametrize("name", list(MODELS))
def test_quantized_files_are_smaller(name, lowered):
    fp32, fp16, int8 = (lowered(name, p).size_bytes() for p in PRECISIONS)
    assert int8 < fp16 < fp32
    assert int8 < 0.4 * fp32  # int8 weights ~ a quarter of fp32, plus float constants
    assert fp16 < 0.55 * fp32


def test_converter_is_registered_with_its_contract():
    conv = get_converter("tflite")
    assert isinstance(conv, TFLiteConverter)
    assert conv.format == "tflite"
    assert conv.precisions == ("fp32", "fp16", "int8", "int8-static", "int8-weights", "int4-weights")
    assert conv.input_dtype == "int32"


def test_unknown_precision_is_a_user_error(teachers, tmp_path):
    with pytest.raises(UserError, match="int4"):
        TFLiteConverter().lower(teachers["bert-embedding"].module, make_spec(teachers["bert-embedding"], "int4"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_runtime_contract_and_repeated_runs(teachers, lowered):
    import ai_edge_litert

    teacher = teachers["bert-embedding"]
    artifact = lowered("bert-embedding", "fp32")
    runtime = TFLiteConverter().runtime(artifact, threads=2)
    assert isinstance(runtime, LiteRTRuntime)
    assert (runtime.name, runtime.version, runtime.provenance) == ("litert", ai_edge_litert.__version__, MEASURED_HOST)
    assert runtime.threads == 2 and runtime.measures_latency is True
    assert runtime.available() == (True, "")

    inputs = teacher.tokenize(TEXTS[:2], SEQ_LEN)
    first = {k: v[:1] for k, v in inputs.items()}
    second = {k: v[1:2] for k, v in inputs.items()}
    out1 = runtime.run(first)
    kept = out1[teacher.output_name].copy()
    out2 = runtime.run(second)
    np.testing.assert_array_equal(out1[teacher.output_name], kept)  # results are not views into the interpreter
    assert not np.allclose(out2[teacher.output_name], kept)
    # int32 inputs (what apps feed) give the same result as int64
    out1_int32 = runtime.run({k: v.astype(np.int32) for k, v in first.items()})
    np.testing.assert_array_equal(out1_int32[teacher.output_name], kept)
    with pytest.raises(ValueError, match="attention_mask"):
        runtime.run({"input_ids": first["input_ids"]})


def test_check_builtin_ops_rejects_flex_model(flex_model, tmp_path):
    path = tmp_path / "flex.tflite"
    path.write_bytes(flex_model)
    with pytest.raises(UnsupportedOpError, match="FlexErf") as info:
        check_builtin_ops(path)
    message = str(info.value)
    assert "\n" not in message and "builtin" in message and "onnx" in message
    assert info.value.exit_code == 2  # a UserError: one line, exit 2
    with pytest.raises(UnsupportedOpError, match="FlexErf"):
        check_builtin_ops(flex_model)  # bytes work too


def test_check_builtin_ops_rejects_other_custom_ops(flex_model):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flex_model))
    flatbuffer_utils.rename_custom_ops(model, {"FlexErf": "MyCustomErf"})
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    assert op_histogram(data) == {"ADD": 1, "MyCustomErf": 1}
    with pytest.raises(UnsupportedOpError, match="custom ops MyCustomErf"):
        check_builtin_ops(data)


def test_lower_writes_nothing_when_the_model_needs_flex_ops(flex_model, teachers, tmp_path, monkeypatch):
    # Stand in for a torch model whose lowering needs a TensorFlow kernel.
    monkeypatch.setattr(tflite, "_torch_to_tflite_bytes", lambda model, spec: flex_model)
    workdir = tmp_path / "out"
    teacher = teachers["bert-embedding"]
    with pytest.raises(UnsupportedOpError, match="FlexErf"):
        TFLiteConverter().lower(teacher.module, make_spec(teacher, "fp32"), workdir)
    assert not any(Path(workdir).iterdir())


def test_check_builtin_ops_rejects_garbage(tmp_path):
    path = tmp_path / "not_a_model.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="TFL3"):
        check_builtin_ops(path)
