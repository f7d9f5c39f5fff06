"""Cached teacher targets equal recomputed ones, whatever batch (order, padding) the text comes back in."""

from __future__ import annotations

import torch

from edgekit.distill.capture import capture
from edgekit.distill.data import tokenize
from edgekit.distill.teacher_cache import TeacherCache
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.texts import load_texts


def _teacher_run(teacher, texts, layers):
    batch = tokenize(teacher.tokenizer, texts, 32, True)
    with torch.no_grad(), capture(teacher.module, layers, True, False, False) as got:
        out = teacher.module(**batch)
    return batch, out, got.states


def test_cached_targets_match_a_fresh_teacher_forward_in_any_batch(tmp_path):
    teacher = load_teacher(build_tiny_model_dir(tmp_path / "m", "bert", "embedding", seed=0, hidden=64, layers=4, heads=4))
    teacher.module.eval()
    texts = load_texts()[:12]
    layers = [1, 3]
    cache = TeacherCache(set(texts[:10]), layers)  # the last two are "augmented variants": held for one batch only
    for chunk in (texts[:6], texts[6:]):
        batch, out, states = _teacher_run(teacher, chunk, layers)
        assert cache.lookup(chunk, batch["attention_mask"]) is None and cache.missing(chunk) == chunk
        cache.store(chunk, batch["attention_mask"], out, states)
    assert len(cache) == 10 and cache.bytes > 0 and cache.missing(texts) == []
    cache.end_batch()
    assert cache.missing(texts) == texts[10:]

    regrouped = [texts[9], texts[0], texts[4], texts[7]]  # new order, new padded length
    batch, out, states = _teacher_run(teacher, regrouped, layers)
    out_c, states_c = cache.lookup(regrouped, batch["attention_mask"])
    assert cache.hits == 1
    # float16 storage: relative error ~1e-3
    torch.testing.assert_close(out_c, out, rtol=2e-3, atol=2e-3)
    m = batch["attention_mask"].bool()
    for j in layers:
        assert states_c[j].shape == states[j].shape
        torch.testing.assert_close(states_c[j][m], states[j][m], rtol=5e-3, atol=5e-3)
        assert float(states_c[j][~m].abs().sum()) == 0.0  # padding positions are masked out of the loss anyway
    assert cache.lookup([texts[0], texts[11]], batch["attention_mask"][:2]) is None  # an augmented variant: run it first


def test_cache_stops_growing_at_its_budget(tmp_path):
    teacher = load_teacher(build_tiny_model_dir(tmp_path / "m", "bert", "embedding", seed=0, hidden=64, layers=4, heads=4))
    texts = load_texts()[:8]
    cache = TeacherCache(set(texts), [0], max_bytes=1)
    batch, out, states = _teacher_run(teacher, texts, [0])
    cache.store(texts, batch["attention_mask"], out, states)
    assert len(cache) == 1  # the first entry crosses the budget, nothing after it is kept
