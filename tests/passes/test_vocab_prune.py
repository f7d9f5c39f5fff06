"""vocab-prune: the embedding table and the tokenizer shrink together; corpus texts tokenize to the same pieces
(new ids) and give the same outputs; bad corpora are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import UserError
from edgekit.passes import PassContext
from edgekit.passes._saliency import find_encoder
from tests.conftest import run_cli
from tests.test_cli import _assert_user_error


def _ctx(h) -> PassContext:
    return PassContext(teacher=h.teacher, texts=h.texts, profile=None, seq_len=32)


@pytest.mark.parametrize("keep_chars", [True, False])
def test_corpus_tokenizes_identically_with_the_pruned_vocab(helpers, keep_chars):
    h = helpers["bert-embedding"]
    ctx = _ctx(h)
    model, _ = h.apply(("vocab-prune", {"keep_chars": keep_chars}), ctx=ctx)
    new_tok, old_tok = ctx.tokenizer, h.teacher.tokenizer
    rec = ctx.records[-1]
    assert rec["vocab_after"] == len(new_tok.get_vocab()) < rec["vocab_before"] == len(old_tok.get_vocab())
    assert find_encoder(model).base.embeddings.word_embeddings.num_embeddings == rec["vocab_after"]
    for text in h.texts[:50]:
        assert new_tok.tokenize(text) == old_tok.tokenize(text)
    assert new_tok.convert_tokens_to_ids("[PAD]") == 0
    enc = new_tok(h.texts[:24], padding="max_length", truncation=True, max_length=32, return_tensors="np")
    new_inputs = h.teacher.tokenize(h.texts[:24], 32) | {"input_ids": enc["input_ids"].astype(np.int64)}
    np.testing.assert_allclose(h.run(model, new_inputs), h.run(), atol=1e-5)


@pytest.mark.parametrize(("corpus", "message"), [("missing.txt", "does not exist"), ("empty.txt", "empty")])
def test_bad_corpus(helpers, tmp_path, corpus, message):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match=message):
        helpers["bert-embedding"].apply(("vocab-prune", {"corpus": str(tmp_path / corpus)}))


def test_export_ships_the_pruned_tokenizer(tiny_model_dirs, tmp_path):
    out = tmp_path / "vp"
    proc = run_cli(
        "export", "--model", str(tiny_model_dirs["bert-embedding"]), "--formats", "onnx", "--precision", "fp32",
        "--recipe", "vocab-prune", "--out", str(out), "--max-texts", "40", "--repeats", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    vocab = (out / "tokenizer" / "vocab.txt").read_text().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(vocab) == manifest["tokenizer"]["vocab_size"] < 30000
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["fidelity"]["metrics"]["cosine_mean"] >= 0.9999  # in-corpus texts: same pieces
    vectors = json.loads((out / "tokenizer_test_vectors.json").read_text())
    case = vectors["cases"][0] if isinstance(vectors, dict) else vectors[0]
    assert max(case["input_ids"]) < len(vocab)
    _assert_user_error(
        run_cli(
            "export",
            "--model",
            str(tiny_model_dirs["bert-embedding"]),
            "--recipe",
            "vocab-prune:corpus=/nonexistent.txt",
            "--out",
            str(tmp_path / "bad"),
        ),  # fmt: skip
        "does not exist",
        tmp_path / "bad",
    )
