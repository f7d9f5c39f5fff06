"""Impossible configurations are one-line UserErrors (exit 2), raised before anything is changed."""

from __future__ import annotations

import pytest

from edgekit.errors import UserError
from edgekit.passes import get_pass

BAD_OPTIONS = [
    ("prune-heads", {"ratio": 1.0}),
    ("prune-heads", {"ratio": 0}),
    ("prune-heads", {"ratio": -0.2}),
    ("prune-heads", {}),
    ("prune-heads", {"ratio": 0.5, "heads": 1}),
    ("prune-heads", {"heads": 0}),
    ("prune-heads", {"ratio": 0.5, "saliency": "random"}),
    ("prune-ffn", {"ratio": 1.5}),
    ("prune-ffn", {"ratio": 0.0}),
    ("prune-ffn", {}),
    ("prune-ffn", {"ratio": 0.5, "sparsity": 0.5}),
    ("prune-layers", {}),
    ("prune-layers", {"keep": 0}),
    ("prune-layers", {"keep": 2, "layers": [1]}),
    ("svd", {}),
    ("svd", {"rank": 0}),
    ("svd", {"energy": 0}),
    ("svd", {"energy": 1.2}),
    ("svd", {"params": 1.0}),
    ("svd", {"energy": 0.9, "rank": 8}),
    ("svd", {"energy": 0.9, "targets": "everything"}),
    ("embed-factorize", {"rank": 0}),
    ("embed-factorize", {}),
    ("share-layers", {}),
    ("share-layers", {"every": 0}),
    ("share-layers", {"every": 2, "map": [0, 0]}),
    ("share-layers", {"every": 2, "source": "random"}),
]


@pytest.mark.parametrize(("name", "options"), BAD_OPTIONS)
def test_bad_options_are_user_errors(name, options):
    with pytest.raises(UserError) as info:
        get_pass(name, options)
    assert "\n" not in str(info.value)


BAD_FOR_THE_MODEL = [
    (("prune-heads", {"heads": 4}), "prune-layers"),
    (("prune-heads", {"heads": {1: [0, 1, 2, 3]}}), "prune-layers"),
    (("prune-heads", {"heads": {7: [0]}}), "out of range"),
    (("prune-heads", {"heads": {0: [4]}}), "out of range"),
    (("prune-layers", {"layers": [0, 1, 2, 3]}), "at least one layer"),
    (("prune-layers", {"layers": [4]}), "out of range"),
    (("prune-layers", {"layers": -1}), "out of range"),
    (("prune-layers", {"keep": 5}), "only 4 layers"),
    (("embed-factorize", {"rank": 64}), "rank below"),
]


@pytest.mark.parametrize(("step", "match"), BAD_FOR_THE_MODEL)
def test_impossible_for_this_model_is_user_error(helpers, step, match):
    h = helpers["bert-embedding"]
    with pytest.raises(UserError, match=match) as info:
        h.apply(step)
    assert "\n" not in str(info.value)


def test_pruning_a_factorized_layer_asks_to_reorder_the_recipe(helpers):
    with pytest.raises(UserError, match="before svd"):
        helpers["distilbert-embedding"].apply(("svd", {"params": 0.5}), ("prune-ffn", {"ratio": 0.5}))


def test_data_driven_saliency_without_texts_says_what_to_do(helpers):
    h = helpers["bert-embedding"]
    ctx = h.ctx()
    ctx.texts = []
    with pytest.raises(UserError, match="saliency=magnitude"):
        h.apply(("prune-ffn", {"ratio": 0.5}), ctx=ctx)
    model, _ = h.apply(("prune-ffn", {"ratio": 0.5, "saliency": "magnitude", "reconstruct": False}), ctx=ctx)
    assert model is not None
