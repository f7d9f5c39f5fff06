"""Verification and calibration texts shipped in `samples/texts/` (one text per line)."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError

#: Where the shipped texts live in a source checkout / editable install.
SAMPLE_TEXTS_DIR = Path(__file__).resolve().parents[2] / "samples" / "texts"


def load_texts(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """Non-empty lines of a text file, or of every *.txt file in a directory (default: the shipped samples)."""
    source = Path(path) if path is not None else SAMPLE_TEXTS_DIR
    if source.is_dir():
        files = sorted(source.glob("*.txt"))
    elif source.is_file():
        files = [source]
    else:
        raise UserError(f"text source {source} does not exist; pass a .txt file (one text per line) or a directory of them")
    texts = [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"no texts found in {source}; give one text per line in UTF-8 .txt files")
    return texts[:limit] if limit else texts


def heldout_split(texts: list[str], n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(held-out texts, the rest) by a seeded shuffle of the indices, each list in its original order.

    The benches measure fidelity on the held-out part and let passes / quantizers learn from the rest,
    so a figure is never flattered by texts the model was tuned on.
    """
    import random

    if not 0 < n_eval < len(texts):
        raise UserError(f"cannot hold out {n_eval} of {len(texts)} texts; hold out between 1 and {len(texts) - 1}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in sorted(order[:n_eval])], [texts[i] for i in sorted(order[n_eval:])]
