"""early-exit and token-skip passes on tiny 4-layer models: configs, training records, torch semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.dynamic import EarlyExitModel, TokenSkipModel
from edgekit.errors import UserError
from edgekit.passes import get_pass
from edgekit.verify.fidelity import cosine_rows

BAD = [
    ("early-exit", {"layers": [2, 2]}),
    ("early-exit", {"layers": [2], "target": 1.5}),
    ("early-exit", {"layers": [2], "criterion": "coin-flip"}),
    ("early-exit", {"layers": [1, 2], "criterion": "patience", "threshold": 0}),
    ("token-skip", {}),
    ("token-skip", {"keep": "0@2"}),
    ("token-skip", {"keep": "1.5@2"}),
    ("token-skip", {"keep": "-0.5@2"}),
    ("token-skip", {"keep": "0.5"}),
    ("token-skip", {"keep": "half@2"}),
    ("token-skip", {"keep": ["0.5@2", "0.25@2"]}),
    ("token-skip", {"keep": "0.5@2", "threshold": "0.5@2"}),
]


@pytest.mark.parametrize(("name", "options"), BAD)
def test_bad_options_are_user_errors(name, options):
    with pytest.raises(UserError) as info:
        get_pass(name, options)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "model"),
    [
        ("early-exit", {"layers": [4]}, "bert-embedding"),  # after the last layer: not an exit
        ("early-exit", {"layers": [0, 2]}, "bert-embedding"),
        ("early-exit", {"layers": [2], "criterion": "entropy"}, "bert-embedding"),  # classifier criterion on an embedder
        ("early-exit", {"layers": [2], "criterion": "confidence"}, "bert-classification"),
        ("early-exit", {"layers": [2], "criterion": "patience"}, "bert-classification"),  # needs two exits
        ("token-skip", {"keep": "0.5@4"}, "bert-embedding"),
    ],
)
def test_out_of_range_or_mismatched_configs_fail_before_changing_anything(helpers, name, options, model):
    h = helpers[model]
    before = {k: v.clone() for k, v in h.teacher.module.state_dict().items()}
    with pytest.raises(UserError):
        h.apply((name, options))
    assert all(torch.equal(before[k], v) for k, v in h.teacher.module.state_dict().items())


@pytest.mark.parametrize(
    ("model", "criterion"),
    [("bert-embedding", None), ("distilbert-embedding", None), ("bert-classification", "entropy"), ("bert-classification", "patience")],
)
def test_early_exit_trains_heads_and_calibrates_a_threshold(helpers, model, criterion):
    h = helpers[model]
    opts = {"layers": [1, 2], "target": 0.9, "steps": 60} | ({"criterion": criterion} if criterion else {})
    ee, ctx = h.apply(("early-exit", opts))
    assert isinstance(ee, EarlyExitModel) and ee.exits == [1, 2]
    rec = ctx.records[-1]
    assert rec["heldout_fidelity"] >= 0.9  # the calibrated threshold keeps the target on held-out texts
    assert abs(sum(rec["heldout_exit_rate"].values()) - 1.0) < 1e-3
    assert rec["train_texts"] + rec["heldout_texts"] == len(h.texts)
    # the full-depth path is the teacher's: backbone frozen
    ee.threshold.fill_(1e9 if ee.criterion != "entropy" else -1.0)
    out, layer = ee(**{k: torch.from_numpy(v[:1]) for k, v in h.inputs.items()})
    assert int(layer[0]) == 4
    np.testing.assert_allclose(out.detach().numpy(), h.run(inputs={k: v[:1] for k, v in h.inputs.items()}), atol=1e-6)


def test_embedding_exit_heads_beat_the_untrained_identity_head(helpers):
    """Self-distillation must raise the held-out cosine of an exit over the identity projection it starts from."""
    h = helpers["bert-embedding"]
    ee, ctx = h.apply(("early-exit", {"layers": [2], "threshold": 0.5}))
    untrained = EarlyExitModel(h.teacher.module, [2], "confidence", 0.5)
    inputs = h.teacher.tokenize(h.texts[-24:], 32)  # includes held-out texts
    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        ref = h.run(inputs=inputs)
        trained = ee.forced(0)(**feed).numpy()
        start = untrained.forced(0)(**feed).numpy()
    # random tiny models give near-parallel embeddings: compare cosine *distances* (at least halved)
    assert 1 - cosine_rows(trained, ref).mean() < 0.5 * (1 - cosine_rows(start, ref).mean())


@pytest.mark.parametrize("model", ["bert-embedding", "distilbert-embedding", "bert-classification"])
def test_token_skip_keeps_every_real_token_of_short_texts(helpers, model):
    """Padding is dropped first: keeping half of 32 positions keeps all tokens of short texts, so outputs match."""
    h = helpers[model]
    skip, ctx = h.apply(("token-skip", {"keep": "0.5@2"}))
    assert isinstance(skip, TokenSkipModel)
    short = h.teacher.tokenize(["a short text", "another one", "hi"], 32)
    assert short["attention_mask"].sum(1).max() <= 16
    np.testing.assert_allclose(h.run(skip, short), h.run(inputs=short), atol=2e-5)
    assert ctx.records[-1]["schedule"] == {2: 0.5}


def test_token_skip_on_long_texts_really_drops_tokens(helpers):
    h = helpers["bert-embedding"]
    skip, _ = h.apply(("token-skip", {"keep": ["0.25@1"]}))
    long = h.teacher.tokenize([" ".join(["word"] * 40), "the quick brown fox jumps over the lazy dog " * 4], 32)
    got, ref = h.run(skip, long), h.run(inputs=long)
    assert cosine_rows(got, ref).min() < 0.99999  # something was dropped
    assert np.isfinite(got).all()


def test_threshold_token_skip_keeps_a_dynamic_count(helpers):
    h = helpers["bert-embedding"]
    skip, _ = h.apply(("token-skip", {"threshold": "1e-9@2"}))
    row = {k: v[:1] for k, v in h.inputs.items()}
    # a tiny threshold keeps every real token: equals the teacher
    np.testing.assert_allclose(h.run(skip, row), h.run(inputs=row), atol=2e-5)


@pytest.mark.parametrize(
    "steps",
    [
        [("early-exit", {"layers": [2]}), ("prune-ffn", {"ratio": 0.5})],
        [("token-skip", {"keep": "0.5@2"}), ("early-exit", {"layers": [2]})],
    ],
)
def test_dynamic_passes_must_come_last(steps):
    from edgekit.passes import check_recipe_order

    with pytest.raises(UserError):
        check_recipe_order([(name, get_pass(name, opts)) for name, opts in steps])
