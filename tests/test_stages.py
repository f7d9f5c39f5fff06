"""`Stages` runs a model one layer at a time with the model's own modules: the result must equal the model."""

from __future__ import annotations

import numpy as np
import torch

from edgekit.model import load_teacher
from edgekit.stages import Stages
from edgekit.tiny_models import build_tiny_model_dir

CASES = [("bert", "embedding"), ("distilbert", "embedding"), ("bert", "classification"), ("distilbert", "classification")]


def test_stages_reproduce_every_tiny_model_exactly(tmp_path, sample_texts):
    for kind, task in CASES:
        teacher = load_teacher(build_tiny_model_dir(tmp_path / f"{kind}-{task}", kind, task, seed=0))
        inputs = teacher.tokenize(sample_texts[:6], 32)
        with torch.no_grad():
            got = Stages(teacher.module)(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
        np.testing.assert_allclose(got, teacher.run(inputs), atol=1e-6, err_msg=f"{kind} {task}")
