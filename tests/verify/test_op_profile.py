"""Per-op / per-layer profiling and memory measurement on tiny exported models, in their real runtimes."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from converters.base import Artifact, TensorSpec, get_converter
from edgekit.errors import UserError
from edgekit.model import load_teacher
from edgekit.verify import op_profile
from edgekit.verify.op_profile import (
    EMBEDDINGS,
    HEAD,
    OpProfileUnavailable,
    assign_layers,
    layer_index,
    measure_memory,
    parse_ort_trace,
    peak_memory_mb,
    profile_ops,
)

SEQ = 32
OP_PROFILE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adb" / "bm_cpu_op_profiling.txt"


@pytest.fixture(scope="module")
def onnx_artifacts(tiny_model_dirs, sample_texts, tmp_path_factory):
    """(model id, precision) -> exported ONNX artifact of the 2-layer tiny models."""
    conv = get_converter("onnx")
    out = {}
    for name, precision in [("bert-embedding", "fp32"), ("bert-embedding", "int8"), ("distilbert-embedding", "fp32")]:
        teacher = load_teacher(tiny_model_dirs[name])
        inputs = teacher.tokenize(sample_texts[:8], SEQ)
        spec = teacher.export_spec(precision, inputs, calibration=4)
        out[(name, precision)] = conv.lower(teacher.module, spec, tmp_path_factory.mktemp(f"prof-{name}-{precision}"))
    return out


@pytest.fixture(scope="module")
def profiles(onnx_artifacts):
    return {key: profile_ops(art, threads=1, runs=8, warmup=2, seq_len=SEQ) for key, art in onnx_artifacts.items()}


@pytest.mark.parametrize("key", [("bert-embedding", "fp32"), ("bert-embedding", "int8"), ("distilbert-embedding", "fp32")])
def test_onnx_profile_times_add_up_and_find_both_layers(profiles, key):
    prof = profiles[key]
    assert prof.provenance == "measured-host" and prof.runtime == "onnxruntime" and prof.threads == 1
    assert prof.runs == 8 and prof.warmup == 2
    # onnxruntime times kernels in whole microseconds: a trivial Shape/Gather can read 0, arithmetic cannot
    assert prof.by_type and all(o.ms >= 0 for o in prof.by_type) and all(n.ms >= 0 for n in prof.nodes)
    heavy = [o for o in prof.by_type if any(k in o.op_type for k in ("MatMul", "Attention", "LayerNorm", "Gelu"))]
    assert len(heavy) >= 3 and all(o.ms > 0 for o in heavy), prof.by_type
    assert sum(o.ms > 0 for o in prof.by_type) >= 0.8 * len(prof.by_type), prof.by_type
    assert sum(o.ms for o in prof.by_type) == pytest.approx(prof.op_total_ms)
    assert sum(layer.ms for layer in prof.by_layer) == pytest.approx(prof.op_total_ms)
    assert sum(o.share for o in prof.by_type) == pytest.approx(1.0)
    assert sum(o.nodes for o in prof.by_type) == len(prof.nodes)
    # kernel times are what onnxruntime timed inside each model_run; the rest is the executor's overhead
    assert 0.3 * prof.total_ms <= prof.op_total_ms <= prof.total_ms * 1.001, (prof.op_total_ms, prof.total_ms)
    names = [layer.name for layer in prof.by_layer]
    assert names == [EMBEDDINGS, "layer.0", "layer.1", HEAD]
    assert prof.layers_found == 2
    assert all(layer.ms > 0 and layer.nodes > 0 for layer in prof.by_layer)


def test_fused_nodes_are_attributed_to_their_layer(profiles):
    prof = profiles[("bert-embedding", "fp32")]
    by_name = {n.name: n for n in prof.nodes}
    # onnxruntime's fused nodes carry no layer in their names; their output tensors do
    assert by_name["Attention_0"].layer == "layer.0" and by_name["Attention_1"].layer == "layer.1"
    assert by_name["SkipLayerNorm_AddBias_1"].layer == "layer.0"  # the output LayerNorm closes layer 0
    assert by_name["EmbedLayerNormalization_0"].layer == EMBEDDINGS
    types = {o.op_type for o in prof.by_type}
    assert {"Attention", "SkipLayerNormalization", "MatMul"} <= types
    int8 = {o.op_type for o in profiles[("bert-embedding", "int8")].by_type}
    assert "QAttention" in int8


def test_profile_json_and_top_nodes(profiles):
    prof = profiles[("bert-embedding", "fp32")]
    top = prof.top_nodes(3)
    assert len(top) == 3 and top[0].ms >= top[1].ms >= top[2].ms
    data = json.loads(json.dumps(prof.to_json(top=5)))
    assert len(data["nodes"]) == 5 and data["nodes_total"] == len(prof.nodes)
    assert data["provenance"] == "measured-host" and data["by_layer"][1]["name"] == "layer.0"


def test_parse_ort_trace_drops_warmup_runs():
    def node(name, ts, dur, op="MatMul"):
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op, "provider": "CPUExecutionProvider"},
        }

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("a", 10, 50),
        node("b", 70, 20, "Softmax"),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
        node("a", 205, 10),
        node("b", 220, 6, "Softmax"),
        {"cat": "Session", "name": "model_run", "ts": 300, "dur": 60},
        node("a", 305, 30),
        node("b", 340, 10, "Softmax"),
    ]
    node_ms, run_ms, providers = parse_ort_trace(events, warmup=1)
    assert node_ms == [("a", "MatMul", pytest.approx(0.020)), ("b", "Softmax", pytest.approx(0.008))]
    assert run_ms == [0.04, 0.06] and providers == {"CPUExecutionProvider"}
    with pytest.raises(ValueError):
        parse_ort_trace(events, warmup=3)


def test_assign_layers_by_name_then_position():
    nodes = [
        ("EmbedLayerNormalization_0", "EmbedLayerNormalization", []),
        ("Attention_0", "Attention", []),  # unnamed, opens layer 0
        ("/encoder/layer.0/attention/output/dense/MatMul", "MatMul", []),
        ("SkipLayerNorm_AddBias_1", "SkipLayerNormalization", []),  # unnamed tail of layer 0
        ("Attention_1", "Attention", []),  # unnamed, opens layer 1
        ("fused", "MatMul", ["/encoder/layer.1/output/dense/MatMul_output_0"]),  # named by its output
        ("/model/Mul", "Mul", []),
    ]
    assert assign_layers(nodes) == [EMBEDDINGS, "layer.0", "layer.0", "layer.0", "layer.1", "layer.1", HEAD]
    assert assign_layers([("a", "MatMul", []), ("b", "Add", [])]) == ["unattributed", "unattributed"]


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("/model/encoder/encoder/layer.3/attention/self/Reshape_3_output_0", 3),
        ("/model/encoder/transformer/layer.5/ffn/lin1/MatMul", 5),  # DistilBERT
        ("/model/layers.11/mlp/MatMul", 11),
        ("transformer/h.2/attn/MatMul", 2),
        (  # litert-torch tensor names
            "converters.tflite._NamedInt32IO/edgekit.model.EmbeddingModel_model/transformers.models.bert.modeling_bert.BertModel_encoder/"
            "transformers.models.bert.modeling_bert.BertEncoder_encoder/transformers.models.bert.modeling_bert.BertLayer_1/"
            "transformers.models.bert.modeling_bert.BertOutput_output/torch.nn.modules.linear.Linear_dense;1",
            1,
        ),
        ("[...modeling_distilbert.TransformerBlock_4/...FFN_ffn;2]:57", 4),
        ("EmbedLayerNormalization_0", None),
        ("SkipLayerNorm_AddBias_3", None),
        ("torch.nn.modules.normalization.LayerNorm_LayerNorm;1", None),
        ("/model/encoder/embeddings/LayerNorm/Add_1", None),
    ],
)
def test_layer_index(name, index):
    assert layer_index(name) == index


def test_tflite_without_a_host_benchmark_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKIT_BENCHMARK_MODEL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    art = Artifact("tflite", "int8", tmp_path / "model-int8.tflite", [TensorSpec("input_ids", "int32", (1, SEQ))], [])
    with pytest.raises(OpProfileUnavailable) as exc:
        profile_ops(art, threads=1)
    message = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in message
    assert "not available for TFLite on this host via Python" in message and "--enable_op_profiling=true" in message


def test_tflite_with_a_host_benchmark_model_parses_its_op_profile(tmp_path):
    """A host benchmark_model given explicitly (here a stand-in script printing a recorded op profile)."""
    log = tmp_path / "args.json"
    tool = tmp_path / "benchmark_model"
    tool.write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
        f"sys.stderr.write(open({str(OP_PROFILE_FIXTURE)!r}).read())\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    art = Artifact("tflite", "int8", tmp_path / "model-int8.tflite", [], [])
    prof = profile_ops(art, threads=2, runs=7, warmup=1, benchmark_model=tool)
    args = json.loads(log.read_text())
    assert args[0] == f"--graph={art.path}"
    assert {"--num_threads=2", "--warmup_runs=1", "--num_runs=7", "--use_xnnpack=true", "--enable_op_profiling=true"} <= set(args)
    assert prof.provenance == "measured-host" and prof.artifact == "model-int8.tflite" and prof.format == "tflite"
    assert prof.by_type[0].op_type == "Fully Connected (NC, QD8, F32, QC8W) GEMM"
    assert sum(o.ms for o in prof.by_type) == pytest.approx(prof.op_total_ms)


def test_coreml_and_bad_arguments(tmp_path):
    art = Artifact("coreml", "fp16", tmp_path / "m.mlpackage", [], [])
    with pytest.raises(OpProfileUnavailable, match="Xcode"):
        profile_ops(art, threads=1)
    with pytest.raises(OpProfileUnavailable):
        measure_memory(art, threads=1)
    with pytest.raises(UserError):
        profile_ops(art, threads=0)


def test_memory_of_loading_and_running_in_a_fresh_process(onnx_artifacts):
    art = onnx_artifacts[("bert-embedding", "fp32")]
    mem = measure_memory(art, threads=1, runs=2, seq_len=SEQ)
    assert mem.provenance == "measured-host" and mem.runtime.startswith("onnxruntime")
    assert mem.peak_mb >= mem.after_load_mb >= mem.baseline_mb * 0.99
    # the weights (~4 MB of fp32 embeddings) have to be resident at least once
    assert mem.peak_delta_mb >= 0.5 * art.size_bytes() / 2**20
    assert mem.peak_delta_mb < 500
    assert json.loads(json.dumps(mem.to_json()))["peak_delta_mb"] == pytest.approx(mem.peak_delta_mb)


def test_peak_memory_mb_is_the_delta(onnx_artifacts, monkeypatch):
    calls = []

    def fake_measure(artifact, threads, **kwargs):
        calls.append((artifact.name, threads, kwargs))
        return op_profile.MemoryProfile("m", "rt", threads, 1, 100.0, 110.0, 130.0, 30.0, "test")

    monkeypatch.setattr(op_profile, "measure_memory", fake_measure)
    assert peak_memory_mb(onnx_artifacts[("bert-embedding", "int8")], 2) == 30.0
    assert calls == [("model-int8.onnx", 2, {"runs": 3, "seq_len": 128})]
