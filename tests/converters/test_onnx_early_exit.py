"""Early exit lowered to ONNX `If`: the graph holds one If per exit, forcing each branch through the
`exit_threshold` input gives the torch module's output on that path, and layers after an exit do not run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from converters.base import EXIT_LAYER, get_converter
from edgekit.dynamic import EarlyExitModel
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.fidelity import cosine_rows

SEQ = 32
EXITS = [1, 3]
#: (model kind, task, criterion, threshold that always exits, threshold that never exits)
CASES = [
    ("bert", "embedding", "confidence", -1.0, 2.0),
    ("distilbert", "embedding", "confidence", -1.0, 2.0),
    ("bert", "classification", "entropy", 2.0, -1.0),
    ("bert", "classification", "max-prob", -1.0, 2.0),
    ("distilbert", "classification", "patience", -1.0, 10.0),
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee-models")
    kinds = {(k, t) for k, t, *_ in CASES}
    return {(k, t): load_teacher(build_tiny_model_dir(root / f"{k}-{t}", k, t, seed=0, hidden=64, layers=4, heads=4)) for k, t in kinds}


def _export(teacher, model, precision: str, texts: list[str], out: Path):
    inputs = teacher.tokenize(texts, SEQ)
    spec = teacher.export_spec(precision, inputs, calibration=8)
    spec.output_names = [teacher.output_name, EXIT_LAYER]
    return get_converter("onnx").lower(model, spec, out), inputs


def _session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("kind", "task", "criterion", "always", "never"), CASES)
def test_both_branches_match_torch(teachers, sample_texts, tmp_path, kind, task, criterion, always, never):
    teacher = teachers[(kind, task)]
    model = EarlyExitModel(teacher.module, EXITS, criterion, threshold=0.5).eval()
    art, inputs = _export(teacher, model, "fp32", sample_texts[:12], tmp_path)
    assert art.ops.get("If") == len(EXITS)
    assert [o.name for o in art.outputs] == [teacher.output_name, EXIT_LAYER]
    assert "exit_threshold" not in [i.name for i in art.inputs]  # optional: has a default
    sess = _session(art.path)
    for threshold, path, layer in [(always, 0, EXITS[0]), (never, None, 4)]:
        for i in range(6):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            out, exit_layer = sess.run(None, row | {"exit_threshold": np.array([threshold], np.float32)})
            assert exit_layer.tolist() == [layer]
            with torch.no_grad():
                ref = model.forced(path)(**{k: torch.from_numpy(v) for k, v in row.items()}).numpy()
            assert cosine_rows(out, ref).min() >= 0.9999
            np.testing.assert_allclose(out, ref, atol=1e-4)


def test_middle_exit_and_default_threshold(teachers, sample_texts, tmp_path):
    """Without a threshold feed the calibrated default applies; an exit in the middle returns its own layer."""
    teacher = teachers[("bert", "classification")]
    model = EarlyExitModel(teacher.module, EXITS, "max-prob", threshold=2.0).eval()
    art, inputs = _export(teacher, model, "fp32", sample_texts[:4], tmp_path)
    sess = _session(art.path)
    row = {k: v[:1] for k, v in inputs.items()}
    assert sess.run(None, row)[1].tolist() == [4]  # default 2.0: max-prob never exceeds it
    # a threshold between the first and second exit's max-prob makes the second exit fire
    with torch.no_grad():
        feed = {k: torch.from_numpy(v) for k, v in row.items()}
        p = [float(torch.softmax(model.forced(j)(**feed), -1).max()) for j in (0, 1)]
    # whichever exit is more confident: a threshold between the two must give the layer torch picks
    mid = (p[0] + p[1]) / 2
    model.threshold.fill_(mid)
    with torch.no_grad():
        expected = int(model(**feed)[1][0])
    assert expected == (EXITS[1] if p[1] > p[0] else EXITS[0])
    assert sess.run(None, row | {"exit_threshold": np.array([mid], np.float32)})[1].tolist() == [expected]


def test_layers_after_an_exit_do_not_run(teachers, sample_texts, tmp_path):
    """onnxruntime's profiler lists every node it executed: on an early exit no node of later segments ran."""
    teacher = teachers[("bert", "embedding")]
    model = EarlyExitModel(teacher.module, EXITS, "confidence", threshold=0.5).eval()
    art, inputs = _export(teacher, model, "fp32", sample_texts[:4], tmp_path)
    row = {k: v[:1] for k, v in inputs.items()}

    def executed(threshold: float) -> set[str]:
        sess = _session(art.path, str(tmp_path / f"prof{threshold}"))
        sess.run(None, row | {"exit_threshold": np.array([threshold], np.float32)})
        events = json.loads(Path(sess.end_profiling()).read_text())
        return {e["name"].split("/")[0] for e in events if e.get("cat") == "Node" and e["name"].startswith("s")}

    assert executed(-1.0) == {"s0"}  # exit after layer 1: segments 1 and 2 never execute
    assert executed(2.0) >= {"s0", "s1", "s2"}


def test_int8_early_exit_stays_close(teachers, sample_texts, tmp_path):
    teacher = teachers[("bert", "embedding")]
    model = EarlyExitModel(teacher.module, EXITS, "confidence", threshold=2.0).eval()
    art, inputs = _export(teacher, model, "int8", sample_texts[:16], tmp_path)
    assert art.ops.get("If") == 2 and art.ops.get("MatMulInteger", 0) + art.ops.get("com.microsoft.QAttention", 0) > 0
    sess = _session(art.path)
    outs = np.concatenate([sess.run(None, {k: v[i : i + 1] for k, v in inputs.items()})[0] for i in range(16)])
    assert cosine_rows(outs, teacher.run(inputs)).mean() >= 0.99
