"""palettize: every targeted tensor (or channel group) holds at most 2^bits values; Core ML stores them as
look-up tables (lossless vs the palettized torch model), smaller than dense fp16."""

from __future__ import annotations

import pytest
import torch

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.passes import get_pass
from edgekit.passes._saliency import ATTENTION_ROLES, FFN_ROLES, find_encoder
from edgekit.passes.palettize import kmeans_1d
from edgekit.verify.fidelity import cosine_rows


@pytest.mark.parametrize("bad", [{"bits": 0}, {"bits": 9}, {}, {"bits": 4, "granularity": "row"}, {"bits": 4, "group_size": 0}])
def test_bad_configs(bad):
    with pytest.raises(UserError):
        get_pass("palettize", bad)


def test_kmeans_reduces_error_and_keeps_k_values():
    torch.manual_seed(0)
    x = torch.randn(5000)
    centroids, assign = kmeans_1d(x, 16, 20)
    assert centroids.numel() == 16 and assign.max() < 16
    err = ((centroids[assign] - x) ** 2).mean()
    uniform = torch.linspace(-3, 3, 16)
    err_uniform = ((uniform[torch.bucketize(x, (uniform[1:] + uniform[:-1]) / 2)] - x) ** 2).mean()
    assert err < err_uniform  # k-means beats a uniform 16-level grid on Gaussian weights


@pytest.mark.parametrize(("granularity", "limit"), [("tensor", 16), ("group", 16)])
def test_every_table_holds_at_most_2_to_the_bits_values(helpers, granularity, limit):
    h = helpers["bert-embedding"]
    model, ctx = h.apply(("palettize", {"bits": 4, "granularity": granularity, "group_size": 16}))
    enc = find_encoder(model)
    for i, role in enc.linears(ATTENTION_ROLES + FFN_ROLES):
        w = enc.get(i, role).weight
        groups = [w] if granularity == "tensor" else torch.split(w, 16, dim=0)
        assert all(torch.unique(g).numel() <= limit for g in groups)
    assert ctx.records[-1]["relative_weight_error"] < 0.2
    assert cosine_rows(h.run(model), h.run()).mean() >= 0.95


def test_coreml_stores_lookup_tables(helpers, tmp_path):
    h = helpers["bert-embedding"]
    model, _ = h.apply(("palettize", {"bits": 4}))
    conv = get_converter("coreml")
    dense = conv.lower(h.teacher.module, h.teacher.export_spec("fp32", h.inputs, deployment_target="iOS16", stem="dense"), tmp_path)
    pal = conv.lower(model, h.teacher.export_spec("fp32", h.inputs, deployment_target="iOS16", stem="pal"), tmp_path)
    assert pal.ops.get("constexpr_lut_to_dense", 0) == 4 * 6  # every encoder Linear of the 4 layers
    assert any("look-up tables" in n for n in pal.notes)
    assert pal.size_bytes() < dense.size_bytes()
    rows = {k: v[:3] for k, v in h.inputs.items()}
    runtime = conv.runtime(pal, 1)
    out = torch.cat(
        [torch.from_numpy(runtime.run({k: v[i : i + 1] for k, v in rows.items()})["embedding"].reshape(1, -1)) for i in range(3)]
    )
    assert cosine_rows(out.numpy(), h.run(model, rows)).min() >= 0.99999  # the tables hold exactly the torch values
