"""Core ML converter on tiny seeded models: package, I/O, ops, weights, and the MIL reference vs torch.

Tolerances (MIL reference interpreter on host vs the PyTorch module, real tokenised sentences):
mean cosine >= 0.9999 (fp32), >= 0.999 (fp16), >= 0.98 (int8). Weight round-trip: fp32 exact,
fp16 equal to the torch weights rounded to fp16, int8 within half a quantization step (+ fp16
rounding of scale and result), i.e. relative error <= 1/254 + 2^-10 of the tensor's max.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.base import MIL_REFERENCE_HOST, ExportSpec, RuntimeUnavailable, get_converter
from converters.coreml import (
    CoreMLConverter,
    MilReferenceRuntime,
    inspect_package,
    resolve_deployment_target,
    weight_roundtrip,
)
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir

SEQ_LEN = 32
TARGET = "iOS16"
PRECISIONS = ("fp32", "fp16", "int8")
MIN_MEAN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
TEXTS = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog.",
    "Core ML runs this model on the phone's neural engine.",
    "How far is the nearest train station from here?",
    "I loved the film, although the ending was a bit too long for my taste.",
    "Prices rose by 3.5% in March, the fastest pace since 2022.",
    "Can you recommend a good book about the history of mathematics?",
    "Das ist ein deutscher Satz mit einigen Wörtern.",
]
CASES = ["bert-embedding", "distilbert-embedding", "bert-classification"]  # conftest.TINY_MODELS ids


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp(f"coreml-{request.param}")
    teacher = load_teacher(tiny_model_dirs[request.param])
    inputs = teacher.tokenize(TEXTS, SEQ_LEN)
    reference = teacher.run(inputs)
    conv = CoreMLConverter()
    artifacts = {}
    for precision in PRECISIONS:
        spec = teacher.export_spec(precision, inputs, deployment_target=TARGET)
        artifacts[precision] = conv.lower(teacher.module, spec, root / "out")
    return {"teacher": teacher, "inputs": inputs, "reference": reference, "artifacts": artifacts,
            "conv": conv, "out": root / "out"}


def test_registered():
    assert isinstance(get_converter("coreml"), CoreMLConverter)
    assert CoreMLConverter.input_dtype == "int32"
    assert CoreMLConverter.precisions == ("fp32", "fp16", "int8", "int8-weights", "int4-weights")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_package_opens_with_exact_io(exported, precision):
    import coremltools as ct

    art = exported["artifacts"][precision]
    teacher = exported["teacher"]
    assert art.path.name == f"model-{precision}.mlpackage" and art.path.is_dir()
    model = ct.models.MLModel(str(art.path), skip_model_load=True)
    spec = model.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [f.name for f in spec.description.input] == teacher.input_names
    assert [f.name for f in spec.description.output] == [teacher.output_name]
    assert [(t.name, t.dtype, t.shape) for t in art.inputs] == [(n, "int32", (1, SEQ_LEN)) for n in teacher.input_names]
    (out,) = art.outputs
    assert out.name == teacher.output_name and out.dtype == "float32"
    assert out.shape == (1, 32 if teacher.task == "embedding" else 3)
    # the deployment target is in the spec: iOS16 is Core ML specification version 7
    assert spec.specificationVersion == ct.target.iOS16.value == 7
    assert any("iOS16" in n for n in art.notes)
    assert any(f"compute precision {'fp32' if precision == 'fp32' else 'fp16'}" in n for n in art.notes)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_op_histogram(exported, precision):
    ops = exported["artifacts"][precision].ops
    assert ops and all(v > 0 for v in ops.values())
    for op in ("gather", "linear", "layer_norm", "softmax", "matmul"):
        assert op in ops, op
    assert ("constexpr_affine_dequantize" in ops) == (precision == "int8")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_weight_roundtrip(exported, precision):
    art, teacher = exported["artifacts"][precision], exported["teacher"]
    report = weight_roundtrip(art, teacher.module)
    n_params = len(list(teacher.module.named_parameters()))
    assert len(report.matches) + len(report.unmatched) == n_params
    # only the token-type table of single-segment embedding models is folded away
    assert all("token_type_embeddings" in name for name in report.unmatched), report.unmatched
    assert any("word_embeddings" in m.torch_name for m in report.matches)
    assert report.all_within_bounds(), [m for m in report.matches if not m.within_bound]
    if precision == "fp32":
        assert set(report.by_dtype()) == {"fp32"}
        assert report.max_abs_err == 0.0 and all(m.exact for m in report.matches)
    elif precision == "fp16":
        assert set(report.by_dtype()) == {"fp16"}
        assert all(m.exact for m in report.matches)  # exactly the fp16 rounding of the torch weights
        assert report.max_rel_err <= 2.0**-11
    else:
        dtypes = report.by_dtype()
        assert dtypes.get("int8", 0) >= 5  # word embeddings + the 4 FFN matrices of the tiny model
        int8 = [m for m in report.matches if m.stored_dtype == "int8"]
        assert max(m.rel_err for m in int8) <= 1 / 254 + 2.0**-10
        assert max(m.rel_err for m in int8) > 2.0**-11  # really quantized, not fp16


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mil_reference_matches_torch(exported, precision):
    art = exported["artifacts"][precision]
    runtime = exported["conv"].runtime(art, threads=2)
    assert isinstance(runtime, MilReferenceRuntime)
    assert runtime.name == "mil-reference (numpy)" and runtime.provenance == MIL_REFERENCE_HOST
    assert runtime.measures_latency is False and runtime.threads is None
    inputs = exported["inputs"]  # int64, several rows: the runtime casts and runs them one by one
    out = runtime.run(inputs)
    name = exported["teacher"].output_name
    assert list(out) == [name]
    got, ref = out[name].astype(np.float32), exported["reference"]
    assert got.shape == ref.shape and np.isfinite(got).all()
    cos = _cosine(got, ref)
    assert cos.mean() >= MIN_MEAN_COSINE[precision], cos
    if precision == "fp32":
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    if exported["teacher"].task == "classification" and precision != "int8":
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_sizes_shrink_with_precision(exported):
    arts = exported["artifacts"]
    sizes = {p: arts[p].size_bytes() for p in PRECISIONS}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"], sizes
    emb = {p: arts[p].embedding_bytes for p in PRECISIONS}
    vocab_x_hidden = 30522 * 32
    assert vocab_x_hidden * 4 <= emb["fp32"] < sizes["fp32"]
    assert vocab_x_hidden * 2 <= emb["fp16"] < sizes["fp16"]
    assert vocab_x_hidden <= emb["int8"] < vocab_x_hidden * 1.2  # int8 table + one fp16 scale per row


def test_workdir_holds_only_the_packages(exported):
    assert sorted(p.name for p in exported["out"].iterdir()) == [f"model-{p}.mlpackage" for p in sorted(PRECISIONS)]


def test_fp16_masks_stay_finite(exported):
    """coremltools 9.0 turns finfo(float32).min into fp16 -inf and 0 * -inf = NaN; lower() clips it."""
    info = inspect_package(exported["artifacts"]["fp16"].path)
    for name, value in info.program.constants.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml-extra")
    teacher = load_teacher(build_tiny_model_dir(root / "model", kind="bert", task="embedding", seed=1))
    return teacher, teacher.tokenize(TEXTS, 16), root


def _spec(teacher, inputs, precision, target, stem="m"):
    return teacher.export_spec(precision, inputs, deployment_target=target, stem=stem)


def test_int8_ios18_uses_blockwise_shift_scale(tiny_bert):
    import coremltools as ct

    teacher, inputs, root = tiny_bert
    art = CoreMLConverter().lower(teacher.module, _spec(teacher, inputs, "int8", "iOS18"), root / "ios18")
    assert "constexpr_blockwise_shift_scale" in art.ops
    assert ct.models.MLModel(str(art.path), skip_model_load=True).get_spec().specificationVersion == 9
    out = CoreMLConverter().runtime(art, 1).run(inputs)["embedding"]
    assert _cosine(out, teacher.run(inputs)).mean() >= MIN_MEAN_COSINE["int8"]
    assert weight_roundtrip(art, teacher.module).all_within_bounds()


def test_default_target_is_ios15_and_int8_raises_it(tiny_bert):
    teacher, inputs, root = tiny_bert
    for _ in range(2):  # a second export replaces the first
        art = CoreMLConverter().lower(teacher.module, _spec(teacher, inputs, "fp16", None), root / "default")
    assert [p.name for p in (root / "default").iterdir()] == ["m.mlpackage"]
    assert any("iOS15" in n for n in art.notes)
    assert inspect_package(art.path).spec_version == 6
    _, name, notes = resolve_deployment_target(None, "int8")
    assert name == "iOS16" and notes


def test_deployment_target_parsing():
    assert resolve_deployment_target("ios 17", "fp16")[1] == "iOS17"
    assert resolve_deployment_target("iOS16.4", "int8")[1] == "iOS16"
    assert resolve_deployment_target("macOS13", "fp32")[1] == "macOS13"
    with pytest.raises(UserError, match="int8"):
        resolve_deployment_target("iOS15", "int8")
    with pytest.raises(UserError, match="iOS15"):
        resolve_deployment_target("iOS14", "fp32")
    with pytest.raises(UserError):
        resolve_deployment_target("android 33", "fp32")


def test_unknown_precision_is_a_user_error(tiny_bert, tmp_path):
    teacher, inputs, _ = tiny_bert
    with pytest.raises(UserError, match="int4"):
        CoreMLConverter().lower(teacher.module, _spec(teacher, inputs, "int4", None), tmp_path)


class _Digamma(torch.nn.Module):
    def forward(self, input_ids, attention_mask):
        return torch.digamma(input_ids.float() + attention_mask.float()).sum(dim=1, keepdim=True)


def test_unsupported_op_raises_and_leaves_nothing(tmp_path):
    ids = np.ones((1, 8), dtype=np.int64)
    spec = ExportSpec(precision="fp16", seq_len=8, input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], example_inputs={"input_ids": ids, "attention_mask": ids})
    with pytest.raises(UnsupportedOpError, match="digamma") as info:
        CoreMLConverter().lower(_Digamma(), spec, tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_runtime_reports_unreadable_package(tmp_path):
    from converters.base import Artifact

    broken = Artifact(format="coreml", precision="fp16", path=tmp_path / "missing.mlpackage", inputs=[], outputs=[])
    with pytest.raises(RuntimeUnavailable):
        MilReferenceRuntime(broken)
