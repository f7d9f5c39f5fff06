"""Early exit lowered to TFLite `IF` (tf.cond over TensorFlow stages built from the torch weights): the
flatbuffer holds one IF per exit with the later layers inside the else-subgraphs, and forcing each branch
(threshold below / above anything reachable; it is baked into the graph) matches the torch path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.base import EXIT_LAYER, get_converter
from converters.tflite import _Flatbuffer
from edgekit.dynamic import EarlyExitModel
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.fidelity import cosine_rows

SEQ = 32
EXITS = [1, 3]
CASES = [
    ("bert", "embedding", "confidence", -1.0, 2.0),
    ("bert", "classification", "entropy", 2.0, -1.0),
    ("distilbert", "classification", "patience", -1.0, 10.0),
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee-tflite-models")
    kinds = {(k, t) for k, t, *_ in CASES}
    return {(k, t): load_teacher(build_tiny_model_dir(root / f"{k}-{t}", k, t, seed=0, hidden=64, layers=4, heads=4)) for k, t in kinds}


def _export(teacher, model, precision: str, inputs, out: Path):
    spec = teacher.export_spec(precision, inputs, calibration=4)
    spec.output_names = [teacher.output_name, EXIT_LAYER]
    conv = get_converter("tflite")
    art = conv.lower(model, spec, out)
    return art, conv.runtime(art, 1)


@pytest.mark.parametrize(("kind", "task", "criterion", "always", "never"), CASES)
def test_both_branches_match_torch(teachers, sample_texts, tmp_path, kind, task, criterion, always, never):
    teacher = teachers[(kind, task)]
    inputs = teacher.tokenize(sample_texts[:5], SEQ)
    for threshold, path, layer in [(always, 0, EXITS[0]), (never, None, 4)]:
        model = EarlyExitModel(teacher.module, EXITS, criterion, threshold=threshold).eval()
        art, runtime = _export(teacher, model, "fp32", inputs, tmp_path / str(threshold))
        assert art.ops["IF"] == len(EXITS) and "FlexErf" not in art.ops
        assert [o.name for o in art.outputs] == [teacher.output_name, EXIT_LAYER]
        for i in range(5):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            res = runtime.run(row)
            assert res[EXIT_LAYER].tolist() == [layer]
            with torch.no_grad():
                ref = model.forced(path)(**{k: torch.from_numpy(v) for k, v in row.items()}).numpy()
            assert cosine_rows(res[teacher.output_name], ref).min() >= 0.9999
            np.testing.assert_allclose(res[teacher.output_name], ref, atol=1e-4)


def test_later_layers_live_only_in_else_subgraphs(teachers, sample_texts, tmp_path):
    """The main subgraph holds the embeddings and layer 1 only: the interpreter reaches later layers only through IF."""
    teacher = teachers[("bert", "embedding")]
    model = EarlyExitModel(teacher.module, EXITS, "confidence", threshold=0.5).eval()
    art, _ = _export(teacher, model, "fp32", teacher.tokenize(sample_texts[:2], SEQ), tmp_path)
    fb = _Flatbuffer(art.path.read_bytes())
    per_subgraph: dict[int, Counter] = {}
    for s in range(fb.model.SubgraphsLength()):
        sg = fb.model.Subgraphs(s)
        per_subgraph[s] = Counter(fb.opcodes[sg.Operators(j).OpcodeIndex()] for j in range(sg.OperatorsLength()))
    assert per_subgraph[0]["IF"] == 1
    # attention softmax per layer: 1 layer in the main subgraph, the other 3 behind IF
    assert per_subgraph[0]["SOFTMAX"] == 1
    assert sum(c["SOFTMAX"] for c in per_subgraph.values()) == 4


def test_int8_early_exit_quantizes_every_subgraph(teachers, sample_texts, tmp_path):
    teacher = teachers[("bert", "embedding")]
    inputs = teacher.tokenize(sample_texts[:12], SEQ)
    model = EarlyExitModel(teacher.module, EXITS, "confidence", threshold=2.0).eval()
    fp32, _ = _export(teacher, model, "fp32", inputs, tmp_path / "fp32")
    int8, runtime = _export(teacher, model, "int8", inputs, tmp_path / "int8")
    assert int8.ops["IF"] == 2
    # every FULLY_CONNECTED weight, in all subgraphs, became int8: 4 layers x (4 x 64x64 + 2 x 64x256) fp32 -> int8
    saved = fp32.size_bytes() - int8.size_bytes()
    assert saved >= 0.7 * 3 * 4 * (4 * 64 * 64 + 2 * 64 * 256)
    outs = np.concatenate([runtime.run({k: v[i : i + 1] for k, v in inputs.items()})[teacher.output_name] for i in range(12)])
    assert cosine_rows(outs, teacher.run(inputs)).mean() >= 0.99
