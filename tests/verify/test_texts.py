"""The held-out split the benches measure on: disjoint, complete, seeded, in the texts' own order."""

import pytest

from edgekit.errors import UserError
from edgekit.verify.texts import heldout_split, load_texts


def test_split_is_disjoint_complete_seeded_and_ordered():
    texts = load_texts()
    held, rest = heldout_split(texts, 100)
    assert len(held) == 100 and len(rest) == len(texts) - 100
    assert not set(held) & set(rest) and set(held) | set(rest) == set(texts)
    assert held == sorted(held, key=texts.index) and rest == sorted(rest, key=texts.index)
    assert heldout_split(texts, 100) == (held, rest)
    assert heldout_split(texts, 100, seed=1)[0] != held


@pytest.mark.parametrize("n", [0, 391, 1000])
def test_impossible_sizes_are_user_errors(n):
    with pytest.raises(UserError, match="cannot hold out"):
        heldout_split(load_texts(), n)
