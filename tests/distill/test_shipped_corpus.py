"""The shipped training corpus (samples/corpus) and how the distill pass draws training-only texts from it."""

from __future__ import annotations

import pytest
import torch

from edgekit.distill.data import (
    SHIPPED_CORPUS_DIR,
    is_shipped_samples,
    load_corpus,
    normalized,
    sample_of,
    shipped_corpus,
    without_heldout,
)
from edgekit.passes import get_pass
from edgekit.verify.texts import SAMPLE_TEXTS_DIR


def test_normalized_folds_case_punctuation_and_spacing():
    assert normalized("STOP sending me these e-mails!!") == normalized("stop sending  me these e mails")
    assert normalized("Wait... what?!") == "wait what"
    assert normalized("你好，世界") == normalized("你好 世界")  # non-Latin letters are kept, punctuation folded
    assert normalized("No.") != normalized("Now.")


def test_without_heldout_drops_near_copies_of_heldout_texts_only():
    texts = ["Set a timer for 5 minutes", "SET A TIMER FOR 5 MINUTES!", "set a timer for 6 minutes"]
    assert without_heldout(texts, ["set a timer for 5 minutes."]) == ["set a timer for 6 minutes"]


def test_shipped_samples_are_recognised_however_spelled(tmp_path):
    assert is_shipped_samples(None)
    assert is_shipped_samples(SAMPLE_TEXTS_DIR)
    assert is_shipped_samples(SAMPLE_TEXTS_DIR / "sentences.txt")
    assert is_shipped_samples(str(SAMPLE_TEXTS_DIR / ".." / "texts"))
    assert not is_shipped_samples(tmp_path / "mine.txt")
    assert not is_shipped_samples(SHIPPED_CORPUS_DIR)


def test_shipped_corpus_is_large_distinct_and_never_a_sample_text():
    corpus = shipped_corpus()
    assert len(corpus) >= 48000
    assert len({normalized(t) for t in corpus}) == len(corpus), "near-duplicate lines inside the corpus"
    samples = {normalized(t) for t in load_corpus(None)}
    assert not [t for t in corpus if normalized(t) in samples]
    assert {f.name for f in SHIPPED_CORPUS_DIR.glob("*.txt")} >= {"conversation_and_social.txt", "multilingual_and_shopping.txt"}


def test_sample_of_is_seeded_ordered_and_spans_every_topic():
    corpus = shipped_corpus()
    picked = sample_of(corpus, 16000, seed=0)
    assert len(picked) == 16000 and picked == sample_of(corpus, 16000, seed=0) and picked != sample_of(corpus, 16000, seed=1)
    position = {t: i for i, t in enumerate(corpus)}
    assert [position[t] for t in picked] == sorted(position[t] for t in picked)  # original order kept
    for topic in SHIPPED_CORPUS_DIR.glob("*.txt"):  # a cut of the first 16k lines would miss most topic files
        lines = set(load_corpus(topic))
        share = sum(t in lines for t in picked) / len(lines)
        assert 0.2 < share < 0.5, (topic.name, share)  # 16k of 48k: about a third of each file
    assert sample_of(["a", "b"], 5, seed=0) == ["a", "b"]


@pytest.mark.parametrize(
    ("extra", "corpus_is_samples", "expected"),
    [("auto", True, "samples/corpus"), ("auto", False, None), ("shipped", False, "samples/corpus"), ("none", True, None)],
)
def test_extra_auto_adds_the_shipped_corpus_only_to_the_shipped_samples(tmp_path, extra, corpus_is_samples, expected):
    mine = tmp_path / "mine.txt"
    mine.write_text("a\nb\n")
    texts, source = get_pass("distill", {"extra": extra}).extra_texts(None if corpus_is_samples else mine)
    assert source == expected
    assert (len(texts) == 16000) if expected else texts == []  # the default extra_limit, sampled across the corpus


def test_default_epochs_follow_the_example_budget():
    d = get_pass("distill", {})
    assert d.default_epochs(313) == 10  # a few hundred texts (x4 with augmentation): capped at 10
    assert d.default_epochs(9500) == 1  # ~9.5k texts x 4: one epoch is already ~38k examples
    assert get_pass("distill", {"augment_copies": 0}).default_epochs(9500) == 5
    assert d.default_epochs(313, 16000) == 3  # the shipped samples' training side x4, plus 16k shipped-corpus texts


@pytest.mark.slow
def test_shipped_corpus_has_no_close_paraphrase_of_a_sample_text():
    """No shipped training text is within cosine 0.9 of a sample text under the real teacher, so held-out fidelity
    measured on samples/texts is not flattered by a paraphrase the student trained on."""
    from edgekit.distill.trainer import _batch_outputs
    from edgekit.model import load_teacher

    teacher = load_teacher()
    torch.set_num_threads(2)

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(_batch_outputs(teacher.module.eval(), teacher.tokenizer, texts, 128, True), dim=-1)

    samples = load_corpus(None)
    sims = embed(shipped_corpus()) @ embed(samples).T
    worst = float(sims.max())
    assert worst < 0.9, worst
