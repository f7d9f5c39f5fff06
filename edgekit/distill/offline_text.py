"""Extra training text that every Python installation has offline: the standard library's docstrings.

The shipped samples are a few hundred sentences, too few for a student to learn the teacher's mapping from
token states to embedding without overfitting. Distillation needs no labels, only inputs the teacher can
label, so any text helps; the stdlib's docstrings are thousands of English sentences on disk, read here
with `ast` (no module is imported or executed). They are training-only input (the `distill` pass's
`extra` option): the held-out texts fidelity is measured on never come from here, and any extra text equal
to a held-out one is dropped.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORDY = re.compile(r"^[A-Za-z][A-Za-z ,;:'()\-]+[.!?]$")


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
    return out


def stdlib_sentences(limit: int = 5000, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """Up to `limit` distinct prose sentences from the stdlib's docstrings (code-like lines skipped), seeded sample."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        for doc in _docstrings(path):
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                for sentence in _SENTENCE_END.split(text):
                    if min_words <= len(sentence.split()) <= max_words and _WORDY.match(sentence):
                        seen.setdefault(sentence, None)
    sentences = list(seen)
    random.Random(seed).shuffle(sentences)
    return sentences[:limit]
