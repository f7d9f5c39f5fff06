"""prune-heads, prune-ffn, prune-layers on tiny BERT / DistilBERT: units are physically removed,
parameter counts drop by exactly the removed rows/columns, the model keeps its forward contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.passes._saliency import find_encoder
from edgekit.verify.fidelity import cosine_rows

EMBEDDERS = ["bert-embedding", "distilbert-embedding"]
H, LAYERS, HEADS, FFN = 64, 4, 4, 256
HEAD = H // HEADS


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model, role):
    enc = find_encoder(model)
    return [tuple(enc.get(i, role).weight.shape) for i in range(len(enc))]


@pytest.mark.parametrize("name", EMBEDDERS)
@pytest.mark.parametrize("saliency", ["obs", "taylor", "magnitude"])
def test_prune_heads_removes_half_the_heads_physically(helpers, name, saliency):
    h = helpers[name]
    model, ctx = h.apply(("prune-heads", {"ratio": 0.5, "saliency": saliency}))
    enc = find_encoder(model)
    assert [enc.num_heads(i) for i in range(LAYERS)] == [2] * LAYERS
    inner = 2 * HEAD
    assert shapes(model, "q") == shapes(model, "k") == shapes(model, "v") == [(inner, H)] * LAYERS
    assert shapes(model, "o") == [(H, inner)] * LAYERS
    # q, k, v lose rows (+ bias), o loses columns: exactly that many parameters
    removed = LAYERS * (3 * (inner * H + inner) + H * inner)
    assert n_params(h.teacher.module) - n_params(model) == removed
    rec = ctx.records[-1]
    assert rec["pass"] == "prune-heads" and rec["params_before"] - rec["params_after"] == removed
    assert rec["removed"]["heads_per_layer_after"] == [2] * LAYERS
    out = h.run(model)
    assert out.shape == h.run().shape and np.isfinite(out).all()


@pytest.mark.parametrize("name", EMBEDDERS)
def test_prune_heads_global_ranking_keeps_a_head_in_every_layer(helpers, name):
    model, ctx = helpers[name].apply(("prune-heads", {"ratio": 0.75, "per_layer": False, "saliency": "taylor"}))
    after = ctx.records[-1]["removed"]["heads_per_layer_after"]
    assert sum(after) == LAYERS * HEADS - 12 and min(after) >= 1


@pytest.mark.parametrize("name", EMBEDDERS)
def test_explicit_heads_equal_hf_head_mask_and_compose(helpers, name):
    """Pruning heads (no refit) is exactly masking them; a second prune counts current positions."""
    h = helpers[name]
    off = {"reconstruct": False}
    model, _ = h.apply(("prune-heads", {"heads": {0: [1]}, **off}), ("prune-heads", {"heads": {0: [2], 2: [0]}, **off}))
    enc = find_encoder(model)
    assert [enc.num_heads(i) for i in range(LAYERS)] == [2, 4, 3, 4]  # layer 0 lost original heads 1 and 3
    mask = torch.ones(LAYERS, HEADS)
    mask[0, 1] = mask[0, 3] = mask[2, 0] = 0
    feed = {k: torch.from_numpy(v) for k, v in h.inputs.items()}
    hf_full = find_encoder(h.teacher.module).hf
    with torch.no_grad():
        want = hf_full(**feed, head_mask=mask).last_hidden_state
        got = enc.hf(**feed).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", EMBEDDERS)
@pytest.mark.parametrize("saliency", ["obs", "taylor", "magnitude"])
def test_prune_ffn_shrinks_both_linears(helpers, name, saliency):
    h = helpers[name]
    model, ctx = h.apply(("prune-ffn", {"ratio": 0.5, "saliency": saliency}))
    assert shapes(model, "ffn_in") == [(FFN // 2, H)] * LAYERS
    assert shapes(model, "ffn_out") == [(H, FFN // 2)] * LAYERS
    removed = LAYERS * ((FFN // 2) * H + FFN // 2 + H * (FFN // 2))
    assert n_params(h.teacher.module) - n_params(model) == removed
    assert ctx.records[-1]["removed"]["ffn_size_after"] == [FFN // 2] * LAYERS
    enc = find_encoder(model)
    assert (enc.config.intermediate_size if enc.family == "bert" else enc.config.hidden_dim) == FFN // 2
    assert h.run(model).shape == h.run().shape


@pytest.mark.parametrize("name", EMBEDDERS)
def test_prune_ffn_global_ranking_allots_unevenly(helpers, name):
    model, ctx = helpers[name].apply(("prune-ffn", {"ratio": 0.5, "per_layer": False}))
    after = ctx.records[-1]["removed"]["ffn_size_after"]
    assert sum(after) == LAYERS * FFN // 2 and min(after) >= 1


@pytest.mark.parametrize("name", EMBEDDERS)
def test_refit_brings_outputs_closer_on_the_calibration_texts(helpers, name):
    h = helpers[name]
    cal = h.teacher.tokenize(h.texts, 32)
    ref = h.run(inputs=cal)
    plain, _ = h.apply(("prune-ffn", {"ratio": 0.5, "saliency": "magnitude", "reconstruct": False}))
    refit, _ = h.apply(("prune-ffn", {"ratio": 0.5, "saliency": "magnitude"}))
    assert cosine_rows(ref, h.run(refit, cal)).mean() > cosine_rows(ref, h.run(plain, cal)).mean()


@pytest.mark.parametrize("name", EMBEDDERS)
@pytest.mark.parametrize("step", [("prune-ffn", {"ratio": 0.02}), ("prune-heads", {"ratio": 0.06, "per_layer": False})])
def test_tiny_ratio_changes_outputs_little(helpers, name, step):
    h = helpers[name]
    model, ctx = h.apply(step)
    assert ctx.records[-1]["params_after"] < ctx.records[-1]["params_before"]  # something was removed
    assert cosine_rows(h.run(), h.run(model)).min() >= 0.99


@pytest.mark.parametrize("name", EMBEDDERS)
@pytest.mark.parametrize("saliency", ["output", "taylor"])
def test_prune_layers_keep(helpers, name, saliency):
    h = helpers[name]
    model, ctx = h.apply(("prune-layers", {"keep": 2, "saliency": saliency}))
    enc = find_encoder(model)
    assert len(enc) == 2
    assert (enc.config.num_hidden_layers if enc.family == "bert" else enc.config.n_layers) == 2
    layer_params = n_params(find_encoder(h.teacher.module).layers[0])
    assert n_params(h.teacher.module) - n_params(model) == 2 * layer_params
    rec = ctx.records[-1]
    assert len(rec["removed"]["layers"]) == 2 and rec["removed"]["layers_after"] == 2
    assert h.run(model).shape == h.run().shape


@pytest.mark.parametrize("name", EMBEDDERS)
def test_prune_layers_explicit_keeps_the_others_in_order(helpers, name):
    h = helpers[name]
    model, _ = h.apply(("prune-layers", {"layers": [0, 3]}))
    kept, orig = find_encoder(model).layers, find_encoder(h.teacher.module).layers
    for new, old in zip(kept, [orig[1], orig[2]], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values(), strict=True))


def test_classifier_heads_and_ffn_with_kl_saliency(helpers):
    h = helpers["bert-classification"]
    model, ctx = h.apply(("prune-heads", {"ratio": 0.5, "saliency": "taylor"}), ("prune-ffn", {"ratio": 0.5}))
    assert h.run(model).shape == (len(h.inputs["input_ids"]), 3)
    assert [r["pass"] for r in ctx.records] == ["prune-heads", "prune-ffn"]
    assert find_encoder(model).layers[0].attention.self.query.weight.shape == (2 * HEAD, H)
