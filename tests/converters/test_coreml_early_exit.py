"""Early exit lowered to Core ML: the ML program holds one MIL `cond` per exit, and following each branch with the
MIL reference interpreter (numpy; Core ML itself needs macOS) gives the torch module's output on that path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.base import EXIT_LAYER, get_converter
from edgekit.dynamic import EarlyExitModel
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.fidelity import cosine_rows

SEQ = 32
EXITS = [1, 3]
CASES = [
    ("bert", "embedding", "confidence", -1.0, 2.0),
    ("distilbert", "classification", "patience", -1.0, 10.0),
]


@pytest.mark.parametrize(("kind", "task", "criterion", "always", "never"), CASES)
def test_cond_branches_match_torch(tmp_path, sample_texts, kind, task, criterion, always, never):
    teacher = load_teacher(build_tiny_model_dir(tmp_path / "m", kind, task, seed=0, hidden=64, layers=4, heads=4))
    inputs = teacher.tokenize(sample_texts[:3], SEQ)
    conv = get_converter("coreml")
    for threshold, path, layer in [(always, 0, EXITS[0]), (never, None, 4)]:
        model = EarlyExitModel(teacher.module, EXITS, criterion, threshold=threshold).eval()
        spec = teacher.export_spec("fp32", inputs, deployment_target="iOS16", stem=f"ee-{threshold}")
        spec.output_names = [teacher.output_name, EXIT_LAYER]
        art = conv.lower(model, spec, tmp_path / "out")
        assert art.ops.get("cond", 0) == len(EXITS), art.ops
        assert [o.name for o in art.outputs] == [teacher.output_name, EXIT_LAYER]
        runtime = conv.runtime(art, 1)
        for i in range(3):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            res = runtime.run(row)
            assert np.asarray(res[EXIT_LAYER]).reshape(-1).tolist() == [layer]
            with torch.no_grad():
                ref = model.forced(path)(**{k: torch.from_numpy(v) for k, v in row.items()}).numpy()
            assert cosine_rows(np.asarray(res[teacher.output_name]).reshape(ref.shape), ref).min() >= 0.9999
