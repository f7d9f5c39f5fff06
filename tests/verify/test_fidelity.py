import numpy as np
import pytest

from edgekit.verify.fidelity import fidelity, nearest_neighbour_agreement


def test_identical_embeddings_are_perfect():
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    m = fidelity("embedding", x, x.copy())
    assert m["cosine_mean"] == pytest.approx(1.0, abs=1e-9) and m["nn_agreement"] == 1.0 and m["max_abs_diff"] == 0


def test_orthogonal_embeddings_score_zero_cosine():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [-1.0, 0.0]])
    m = fidelity("embedding", a, b)
    assert m["cosine_mean"] == pytest.approx(0.0, abs=1e-12) and m["cosine_min"] == pytest.approx(0.0, abs=1e-12)


def test_nearest_neighbour_agreement_detects_swaps():
    t = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    s = t[[0, 2, 1, 3]]  # rows 1 and 2 swapped: neighbours change for every row
    assert nearest_neighbour_agreement(t, t) == 1.0
    assert nearest_neighbour_agreement(t, s) < 1.0


def test_logits_metrics():
    t = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    same = fidelity("classification", t, t)
    assert same["top1_agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    flipped = fidelity("classification", t, t[:, ::-1].copy())
    assert flipped["top1_agreement"] == 0.5 and flipped["kl_mean"] > 0.5
