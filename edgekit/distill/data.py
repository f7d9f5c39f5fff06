"""Distillation data: the corpus, its held-out split, simple text augmentation and batches.

The held-out texts are chosen once per (corpus, seed) after removing duplicate lines, so no text (and no
duplicate of it) is ever both trained on and used to measure fidelity; augmentation only ever draws from
the training side.

`swap` replaces about a fifth of the words with words drawn from other training texts, so known sentence
shapes meet words in contexts the corpus never put them in.

Augmentation works on the text, so the teacher labels each variant itself (its output on the changed text
is the target, not the original's): `dropout` drops words, `mask` replaces a short span of words with the
mask token, `mix` joins two training texts (a longer input with new context for every token). Each adds
inputs the student has not seen, which matters when the corpus is a few hundred sentences.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import UserError
from edgekit.verify.texts import SAMPLE_TEXTS_DIR, load_texts

AUGMENTATIONS = ("dropout", "mask", "mix", "swap")

#: training-only general text shipped with edgekit (see samples/corpus/README.md)
SHIPPED_CORPUS_DIR = SAMPLE_TEXTS_DIR.parent / "corpus"


def is_shipped_samples(path: str | Path | None) -> bool:
    """True when `path` means the shipped sample texts (the default corpus), however it was spelled."""
    if path is None:
        return True
    resolved = Path(path).resolve()
    return resolved == SAMPLE_TEXTS_DIR or resolved.parent == SAMPLE_TEXTS_DIR


def shipped_corpus() -> list[str]:
    """The shipped general training corpus: distinct lines of samples/corpus/*.txt."""
    return list(dict.fromkeys(load_texts(SHIPPED_CORPUS_DIR)))


def sample_of(texts: list[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of `texts`, a seeded sample in their original order: a cut that spans every topic file
    (taking the first `limit` lines would keep only the alphabetically first topics)."""
    if len(texts) <= limit:
        return list(texts)
    keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[i] for i in keep]


def normalized(text: str) -> str:
    """Case, punctuation and spacing folded away: "STOP it!!" and "stop it" are the same text for held-out purposes."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.casefold()).split())


def without_heldout(texts: list[str], heldout: list[str]) -> list[str]:
    """`texts` minus any text that equals a held-out text up to case, punctuation and spacing."""
    held = {normalized(t) for t in heldout}
    return [t for t in texts if normalized(t) not in held]


def load_corpus(path: str | Path | None) -> list[str]:
    """Distinct non-empty lines of a .txt file or a directory of them (default: the shipped sample texts)."""
    if path is not None and Path(path).is_dir() and not any(Path(path).glob("*.txt")):
        raise UserError(f"distill: corpus directory {path} holds no .txt files; give one text per line in UTF-8 .txt files")
    texts = list(dict.fromkeys(load_texts(path)))
    if len(texts) < 2:
        raise UserError(
            f"distill: the corpus {path or 'samples/texts'} has {len(texts)} distinct text; it needs at least 2 (train + held out)"
        )
    return texts


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held_out): a seeded random `fraction` is held out (at least one text on each side)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [texts[i] for i in train], [texts[i] for i in held]


def augment(text: str, kind: str, rng: random.Random, pool: list[str], mask_token: str) -> str:
    """One augmented variant of `text` (see the module docstring)."""
    words = text.split()
    if kind == "dropout" and len(words) > 1:
        kept = [w for w in words if rng.random() >= 0.15]
        return " ".join(kept or [rng.choice(words)])
    if kind == "mask" and words:
        span = min(len(words), rng.randint(1, 3))
        start = rng.randrange(len(words) - span + 1)
        return " ".join(words[:start] + [mask_token] + words[start + span :])
    if kind == "swap" and words and pool:
        return " ".join(rng.choice(rng.choice(pool).split() or [w]) if rng.random() < 0.2 else w for w in words)
    if kind == "mix" and pool:
        other = rng.choice(pool)
        return f"{text} {other}" if rng.random() < 0.5 else f"{other} {text}"
    return text


def epoch_texts(
    train: list[str], kinds: list[str], copies: int, seed: int, epoch: int, mask_token: str, plain: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The texts of one epoch, shuffled: every training text plus `copies` augmented variants of each, and the
    `plain` (extra) texts once each, unaugmented: augmentation stretches a small corpus, a large one needs none."""
    rng = random.Random(seed * 1_000_003 + epoch)
    texts = list(train)
    if kinds and copies > 0:
        for text in train:
            texts.extend(augment(text, rng.choice(kinds), rng, train, mask_token) for _ in range(copies))
    texts.extend(plain)
    rng.shuffle(texts)
    return texts


def tokenize(tokenizer, texts: list[str], max_len: int, with_token_types: bool) -> dict[str, torch.Tensor]:
    """A batch padded to its own longest text (not the static length): training costs what the texts need."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="np")
    out = {
        "input_ids": torch.from_numpy(enc["input_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(enc["attention_mask"].astype(np.int64)),
    }
    if with_token_types:
        tt = enc.get("token_type_ids")
        out["token_type_ids"] = torch.zeros_like(out["input_ids"]) if tt is None else torch.from_numpy(tt.astype(np.int64))
    return out


def batches(texts: list[str], batch_size: int) -> list[list[str]]:
    return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]


def bucketed_batches(texts: list[str], batch_size: int, seed: int, epoch: int) -> list[list[str]]:
    """Batches of similar-length texts in a seeded random order.

    Each batch is padded to its longest text, and most texts are short (median 14 tokens in the samples) while
    a few run to the 128-token limit: sorting by length within windows of 8 batches cuts the padded tokens
    (the compute) several-fold while keeping batches random. Deterministic per (seed, epoch) for exact resume.
    """
    window = 8 * batch_size
    out: list[list[str]] = []
    for start in range(0, len(texts), window):
        out.extend(batches(sorted(texts[start : start + window], key=len), batch_size))
    random.Random(seed * 7_919 + epoch).shuffle(out)
    return out
