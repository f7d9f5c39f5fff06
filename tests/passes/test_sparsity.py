"""prune-weights: exact sparsity on the targeted Linears, dense elsewhere; Core ML stores the zeros sparse,
ONNX keeps the file size and says so; bad sparsities are one-line errors."""

from __future__ import annotations

import pytest
import torch

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.passes import get_pass
from edgekit.passes._saliency import ATTENTION_ROLES, FFN_ROLES, find_encoder
from edgekit.verify.fidelity import cosine_rows


@pytest.mark.parametrize("bad", [{"sparsity": 1.0}, {"sparsity": 0}, {"sparsity": -0.1}, {}, {"sparsity": 0.5, "scope": "row"}])
def test_bad_sparsity_is_a_user_error(bad):
    with pytest.raises(UserError):
        get_pass("prune-weights", bad)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prunes_exactly_the_requested_fraction(helpers, scope):
    h = helpers["bert-embedding"]
    model, ctx = h.apply(("prune-weights", {"sparsity": 0.5, "scope": scope}))
    enc = find_encoder(model)
    ws = [enc.get(i, r).weight for i, r in enc.linears(ATTENTION_ROLES + FFN_ROLES)]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert abs(zeros - 0.5) < 0.01
    if scope == "layer":
        assert all(abs(float((w == 0).float().mean()) - 0.5) < 0.01 for w in ws)
    emb = enc.base.embeddings.word_embeddings.weight
    assert float((emb == 0).float().mean()) < 0.01  # embeddings untouched by default
    assert ctx.records[-1]["targeted_sparsity"] == pytest.approx(0.5, abs=0.01)
    # small magnitudes go first: a light pruning keeps the output close
    light, _ = h.apply(("prune-weights", {"sparsity": 0.1}))
    assert cosine_rows(h.run(light), h.run()).mean() >= 0.99


def test_coreml_stores_zeros_sparse_and_runs(helpers, tmp_path):
    h = helpers["bert-embedding"]
    model, _ = h.apply(("prune-weights", {"sparsity": 0.6}))
    conv = get_converter("coreml")
    dense = conv.lower(h.teacher.module, h.teacher.export_spec("fp16", h.inputs, deployment_target="iOS16", stem="dense"), tmp_path)
    sparse = conv.lower(model, h.teacher.export_spec("fp16", h.inputs, deployment_target="iOS16", stem="sparse"), tmp_path)
    assert sparse.ops.get("constexpr_sparse_to_dense", 0) > 0 or any("sparse" in n for n in sparse.notes)
    assert any("stored sparse" in n for n in sparse.notes)
    assert sparse.size_bytes() < dense.size_bytes()
    out = conv.runtime(sparse, 1).run({k: v[:4] for k, v in h.inputs.items()})
    ref = h.run(model, {k: v[:4] for k, v in h.inputs.items()})
    assert cosine_rows(out[h.teacher.output_name].reshape(ref.shape), ref).min() >= 0.999  # fp16 MIL reference


def test_onnx_keeps_zeros_dense(helpers, tmp_path):
    h = helpers["bert-embedding"]
    model, _ = h.apply(("prune-weights", {"sparsity": 0.6}))
    conv = get_converter("onnx")
    a = conv.lower(h.teacher.module, h.teacher.export_spec("fp32", h.inputs, stem="dense"), tmp_path)
    b = conv.lower(model, h.teacher.export_spec("fp32", h.inputs, stem="sparse"), tmp_path)
    assert abs(a.size_bytes() - b.size_bytes()) / a.size_bytes() < 0.01
    with torch.no_grad():
        out = conv.runtime(b, 1).run({k: v[:1] for k, v in h.inputs.items()})
    assert cosine_rows(out[h.teacher.output_name], h.run(model, {k: v[:1] for k, v in h.inputs.items()})).min() >= 0.9999
