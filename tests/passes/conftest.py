"""Tiny seeded encoders big enough for structured pruning to mean something (hidden 64, 4 layers,
4 heads, FFN 256), their sample texts, and helpers to apply a pass and run a model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgekit.model import Teacher, load_teacher
from edgekit.passes import PassContext, get_pass
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.texts import load_texts

SEQ = 32
#: id -> (kind, task)
MODELS = {
    "bert-embedding": ("bert", "embedding"),
    "distilbert-embedding": ("distilbert", "embedding"),
    "bert-classification": ("bert", "classification"),
}


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, Teacher]:
    root = tmp_path_factory.mktemp("tiny-pass-models")
    return {
        name: load_teacher(build_tiny_model_dir(root / name, kind, task, seed=0, hidden=64, layers=4, heads=4))
        for name, (kind, task) in MODELS.items()
    }


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return load_texts()[:96]


class Helper:
    """Apply passes to a copy of a teacher and run models on the same tokenised texts."""

    def __init__(self, teacher: Teacher, texts: list[str]) -> None:
        self.teacher = teacher
        self.texts = texts
        self.inputs = teacher.tokenize(texts[:24], SEQ)

    def ctx(self) -> PassContext:
        return PassContext(teacher=self.teacher, texts=self.texts, profile=None, seq_len=SEQ)

    def apply(self, *steps: tuple[str, dict], ctx: PassContext | None = None) -> tuple[torch.nn.Module, PassContext]:
        ctx = ctx or self.ctx()
        model = copy.deepcopy(self.teacher.module)
        for name, options in steps:
            model = get_pass(name, options).apply(model, ctx)
        return model.eval(), ctx

    def run(self, model: torch.nn.Module | None = None, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        model = self.teacher.module if model is None else model
        feed = {k: torch.from_numpy(v) for k, v in (inputs or self.inputs).items()}
        with torch.no_grad():
            return model(**feed).float().numpy()


@pytest.fixture(scope="session")
def helpers(teachers, texts) -> dict[str, Helper]:
    return {name: Helper(t, texts) for name, t in teachers.items()}
