"""share-layers: positions of a group run one module; every format stores that layer once (file sizes
match a model that simply has that many layers); the artifacts compute what the shared torch model does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.passes import get_pass
from edgekit.passes._saliency import count_params, find_encoder
from edgekit.verify.fidelity import cosine_rows

from .test_exports import run_artifact, spec


def stored_weight_bytes(art) -> int:
    """Bytes of constant data in the file (weights), without the graph structure around them."""
    if art.format == "onnx":
        import onnx
        from onnx import numpy_helper

        return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(art.path)).graph.initializer)
    if art.format == "tflite":
        from converters.tflite import _Flatbuffer

        fb = _Flatbuffer(art.path.read_bytes())
        return sum(fb.buffer_bytes(i) for i in range(fb.model.BuffersLength()))
    return sum(p.stat().st_size for p in art.path.rglob("weight.bin"))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"every": 5}, "every=5 but the model has 4 layers"),
        ({"map": [0, 0, 2]}, "map has 3 entries"),
        ({"map": [0, 0, 7, 7]}, "out of range"),
        ({"map": [1, 0, 2, 2]}, "map it to itself"),
    ],
)
def test_bad_configs_are_one_line_user_errors(helpers, options, fragment):
    h = helpers["bert-embedding"]
    with pytest.raises(UserError, match=fragment):
        h.apply(("share-layers", options))


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding", "bert-classification"])
def test_groups_share_one_module_and_the_measured_choice_is_the_cheapest(helpers, name):
    h = helpers[name]
    before = count_params(h.teacher.module)
    model, ctx = h.apply(("share-layers", {"every": 2}))
    layers = list(find_encoder(model).layers)
    assert len(layers) == 4  # depth unchanged
    assert layers[0] is layers[1] and layers[2] is layers[3] and layers[0] is not layers[2]
    per_layer = count_params(find_encoder(h.teacher.module).layers[0])
    assert count_params(model) == before - 2 * per_layer
    record = ctx.records[-1]
    costs = record["removed"]["output_distance_per_candidate"]
    for group in ([0, 1], [2, 3]):
        chosen = record["removed"]["layer_per_position"][group[0]]
        assert costs[f"{group}:{chosen}"] == min(costs[f"{group}:{c}"] for c in group)
    out = h.run(model)
    assert np.isfinite(out).all()


def test_first_and_explicit_map(helpers):
    h = helpers["bert-embedding"]
    _, ctx = h.apply(("share-layers", {"every": 2, "source": "first"}))
    assert ctx.records[-1]["removed"]["layer_per_position"] == [0, 0, 2, 2]
    model, ctx = h.apply(("share-layers", {"map": [0, 0, 0, 3]}))
    assert ctx.records[-1]["removed"]["layer_per_position"] == [0, 0, 0, 3]
    assert ctx.records[-1]["removed"]["stored_layers"] == 2
    layers = list(find_encoder(model).layers)
    assert layers[0] is layers[1] is layers[2]


def test_sharing_twice_is_refused(helpers):
    h = helpers["bert-embedding"]
    with pytest.raises(UserError, match="already shares layers"):
        h.apply(("share-layers", {"every": 2}), ("share-layers", {"every": 2}))


def _with_trained_layernorms(model: torch.nn.Module) -> torch.nn.Module:
    """Random LayerNorm scales, as in a trained model (a fresh one has all ones, which hides per-position folds)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
    return model


@pytest.mark.parametrize(("fmt", "precision"), [("onnx", "fp32"), ("onnx", "int8"), ("coreml", "fp16"), ("tflite", "fp32")])
def test_artifact_stores_shared_layers_once(helpers, tmp_path, fmt, precision):
    """The shared model stores as many weight bytes as a model with 2 layers (prune-layers), not 4.

    (On all-MiniLM-L6-v2 the TFLite converter folds each position's preceding LayerNorm scale into that position's
    Q/K/V weights, so those are stored per position: 74.1 vs 69.0 MB in bench/passes.py.)
    """
    h = helpers["bert-embedding"]
    base = _with_trained_layernorms(copy.deepcopy(h.teacher.module)).eval()
    shared = get_pass("share-layers", {"every": 2, "source": "first"}).apply(copy.deepcopy(base), h.ctx()).eval()
    two_layers = get_pass("prune-layers", {"layers": [1, 3]}).apply(copy.deepcopy(base), h.ctx()).eval()
    conv = get_converter(fmt)
    sizes = {}
    for label, model in (("shared", shared), ("two", two_layers), ("full", base)):
        s = spec(h.teacher, h.inputs, stem=label)
        s.precision = precision
        s.deployment_target = "iOS16"
        s.calibration_inputs = [{k: v[i : i + 1] for k, v in h.inputs.items()} for i in range(8)]
        art = conv.lower(model, s, tmp_path / label)
        sizes[label] = stored_weight_bytes(art)
        if label == "shared":
            shared_art = art
    layer_bytes = (sizes["full"] - sizes["two"]) / 2
    assert layer_bytes > 0
    # within 2% of one layer of the 2-layer model: the shared positions hold one constant
    assert abs(sizes["shared"] - sizes["two"]) < 0.02 * layer_bytes, sizes
    if fmt == "onnx":
        assert any(n.startswith("identical weights stored once") for n in shared_art.notes)
        got = run_artifact(conv, shared_art, h.inputs, h.teacher.output_name)
        with torch.no_grad():
            ref = shared(**{k: torch.from_numpy(v) for k, v in h.inputs.items()}).numpy()
        cos = cosine_rows(ref, got)
        assert cos.min() > (0.9999 if precision == "fp32" else 0.98)
