"""svd and embed-factorize on tiny BERT / DistilBERT: factorized where it saves parameters, exact when
nothing is truncated, and the HF embeddings module keeps its forward contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgekit.passes import get_pass
from edgekit.passes._saliency import find_encoder
from edgekit.passes.lowrank import FactorizedEmbedding, LowRankLinear, energy_rank
from edgekit.verify.fidelity import cosine_rows

EMBEDDERS = ["bert-embedding", "distilbert-embedding"]
H, LAYERS, FFN, VOCAB = 64, 4, 256, 30522


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_energy_rank_counts_the_squared_spectrum():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 3  # a zero singular value is never needed


@pytest.mark.parametrize("name", EMBEDDERS)
def test_svd_params_budget_factorizes_ffn_only(helpers, name):
    h = helpers[name]
    model, ctx = h.apply(("svd", {"params": 0.5, "targets": "ffn"}))
    enc = find_encoder(model)
    rank = int(0.5 * H * FFN / (H + FFN))  # 25
    for i in range(LAYERS):
        for role in ("ffn_in", "ffn_out"):
            mod = enc.get(i, role)
            assert isinstance(mod, LowRankLinear) and mod.rank == rank
            assert mod.down.weight.shape[0] == rank and mod.up.weight.shape[1] == rank
        assert isinstance(enc.get(i, "q"), torch.nn.Linear)
    saved = LAYERS * 2 * (H * FFN - rank * (H + FFN))
    assert n_params(h.teacher.module) - n_params(model) == saved
    rec = ctx.records[-1]
    assert rec["removed"]["factorized"] == 2 * LAYERS and rec["params_before"] - rec["params_after"] == saved
    assert h.run(model).shape == h.run().shape


@pytest.mark.parametrize("name", EMBEDDERS)
def test_svd_energy_one_reproduces_outputs(helpers, name):
    """Full-rank weights stay dense (a full-rank factorization would add parameters); planted
    low-rank weights are factorized exactly."""
    h = helpers[name]
    model, ctx = h.apply(("svd", {"energy": 1.0}))
    assert ctx.records[-1]["removed"]["factorized"] == 0
    assert "no layer factorized" in ctx.records[-1]["notes"][0]
    np.testing.assert_allclose(h.run(model), h.run(), atol=1e-6)

    planted = copy.deepcopy(h.teacher.module)
    enc = find_encoder(planted)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(LAYERS):
            w = enc.get(i, "ffn_in").weight
            w.copy_(torch.randn(FFN, 8, generator=gen) @ torch.randn(8, H, generator=gen) * 0.05)
    ref = h.run(planted)
    for options in ({"energy": 1.0}, {"energy": 1.0, "whiten": True}):
        model = get_pass("svd", options).apply(copy.deepcopy(planted), h.ctx())
        assert [find_encoder(model).get(i, "ffn_in").rank for i in range(LAYERS)] == [8] * LAYERS
        assert cosine_rows(ref, h.run(model)).min() >= 0.9999


@pytest.mark.parametrize("name", EMBEDDERS)
def test_svd_targets_attention(helpers, name):
    model, ctx = helpers[name].apply(("svd", {"rank": 8, "targets": "attention"}))
    enc = find_encoder(model)
    assert all(isinstance(enc.get(i, r), LowRankLinear) for i in range(LAYERS) for r in ("q", "k", "v", "o"))
    assert not any(isinstance(enc.get(i, r), LowRankLinear) for i in range(LAYERS) for r in ("ffn_in", "ffn_out"))


@pytest.mark.parametrize("name", EMBEDDERS)
def test_whitened_svd_beats_plain_svd_at_the_same_rank(helpers, name):
    h = helpers[name]
    cal = h.teacher.tokenize(h.texts, 32)
    ref = h.run(inputs=cal)
    plain, _ = h.apply(("svd", {"rank": 12}))
    white, _ = h.apply(("svd", {"rank": 12, "whiten": True}))
    assert n_params(plain) == n_params(white)
    assert cosine_rows(ref, h.run(white, cal)).mean() > cosine_rows(ref, h.run(plain, cal)).mean()


@pytest.mark.parametrize("name", EMBEDDERS)
def test_embed_factorize(helpers, name):
    h = helpers[name]
    model, ctx = h.apply(("embed-factorize", {"rank": 16}))
    table = find_encoder(model).base.embeddings.word_embeddings
    assert isinstance(table, FactorizedEmbedding)
    assert table.embed.weight.shape == (VOCAB, 16) and table.project.weight.shape == (H, 16)
    assert n_params(h.teacher.module) - n_params(model) == VOCAB * H - (VOCAB * 16 + 16 * H)
    assert ctx.records[-1]["removed"]["factors"] == [[VOCAB, 16], [16, H]]
    assert h.run(model).shape == h.run().shape


@pytest.mark.parametrize("name", EMBEDDERS)
def test_embed_factorize_is_exact_on_a_low_rank_table(helpers, name):
    h = helpers[name]
    planted = copy.deepcopy(h.teacher.module)
    table = find_encoder(planted).base.embeddings.word_embeddings
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        table.weight.copy_(torch.randn(VOCAB, 16, generator=gen) @ torch.randn(16, H, generator=gen) * 0.02)
    ref = h.run(planted)
    model = get_pass("embed-factorize", {"rank": 16}).apply(planted, h.ctx())
    assert cosine_rows(ref, h.run(model)).min() >= 0.9999
