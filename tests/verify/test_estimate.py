"""Latency estimator: FLOP counting, roofline scaling to devices, per-op breakdown, errors, host calibration cache.

Everything except `test_host_calibration_is_measured_once_and_cached` runs on a fixed, synthetic host
calibration (monkeypatched), so the device arithmetic is deterministic and no timing is needed.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.base import get_converter
from edgekit.errors import UserError
from edgekit.model import load_teacher
from edgekit.profiles import load_profile
from edgekit.verify import host_peaks
from edgekit.verify.estimate import ESTIMATED_DEVICE, ESTIMATED_HOST, estimate_artifact, onnx_op_costs, op_costs, tflite_op_costs

SEQ = 24
HIDDEN, LAYERS, INTERMEDIATE = 32, 2, 128  # the conftest tiny BERT


def fake_calibration(runtime: str, threads: int, *, force: bool = False) -> dict:
    """A fixed host: 3 GHz AVX2 core, 80 GFLOP/s fp32 GEMM, 150 GOP/s int8, 15 GB/s DRAM."""
    params = {
        "gemm_fp32": 80e9 * threads,
        "gemm_int8": 150e9 * threads,
        "bmm_fp32": 70e9 * threads,
        "ew": 40e9,
        "transc": 12e9,
        "softmax": 20e9,
        "norm": 3e9,
        "bw_dram": 15e9,
        "bw_cache": 50e9,
        "bw_move": 30e9,
        "overlap_p": 1.5,
        "t_op": 0.8e-6,
        "t_free": 0.3e-6,
        "t_attn": 3e-6,
        "t_call": 10e-6,
    }
    host = {
        "cpu": "test cpu",
        "isa": "avx2+fma",
        "ghz": 3.0,
        "ghz_source": "test",
        "reported_ghz": 3.0,
        "fp32_flops_per_cycle": 32,
        "int8_ops_per_cycle": 64,
        "flops_source": "test",
        "llc_bytes": 0,
    }
    return {
        "schema": host_peaks.SCHEMA,
        "key": f"test|{runtime}|{threads}",
        "runtime": runtime,
        "runtime_version": "test",
        "threads": threads,
        "created_utc": "2026-01-01T00:00:00+00:00",
        "seconds": 0.0,
        "host": host,
        "params": params,
        "fit_rms_log_error": 0.0,
        "micro": [],
    }


@pytest.fixture
def fixed_host(monkeypatch):
    monkeypatch.setattr(host_peaks, "host_calibration", fake_calibration)


def _save(model, path):
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def matmul_chain(path, dims: list[int], rows: int | None = None):
    """x [batch, seq, dims[0]] -> MatMul chain with constant weights (+ one activation x activation MatMul)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    y = "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [y, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        y = f"y{i}"
    nodes.append(helper.make_node("Transpose", [y], ["yt"], perm=[0, 2, 1], name="t"))
    nodes.append(helper.make_node("MatMul", [y, "yt"], ["scores"], name="scores"))
    seq = rows if rows is not None else "seq"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, dims[0]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def quantized(src, dst):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT}
    )
    return dst


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_model_dirs, sample_texts, tmp_path_factory):
    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    inputs = teacher.tokenize(sample_texts[:8], SEQ)
    out = {}
    for fmt, precision in (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32")):
        spec = teacher.export_spec(precision, inputs, calibration=4)
        out[(fmt, precision)] = get_converter(fmt).lower(teacher.module, spec, tmp_path_factory.mktemp(f"{fmt}-{precision}"))
    return out


def _flops(costs, kind: str, precision: str | None = None) -> float:
    return sum(p.flops for op in costs for p in op.parts if p.kind == kind and (precision is None or p.precision == precision))


def analytic_bert(seq: int) -> tuple[float, float]:
    """(linear FLOPs, attention score + context FLOPs) of the tiny BERT encoder at batch 1."""
    linear = LAYERS * 2 * seq * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE)
    attention = LAYERS * 2 * (2 * seq * seq * HIDDEN)
    return linear, attention


# ---------------------------------------------------------------------------------------------
# FLOP counts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("executed", [False, True])
def test_matmul_graph_flops_are_2_m_k_n(tmp_path, executed):
    path = matmul_chain(tmp_path / "chain.onnx", [64, 96, 48])
    costs = onnx_op_costs(path, seq_len=20, executed=executed)
    by_name = {c.name: c for c in costs}
    assert by_name["mm0"].flops == 2 * 20 * 64 * 96
    assert by_name["mm1"].flops == 2 * 20 * 96 * 48
    assert by_name["mm0"].weight_bytes == 64 * 96 * 4
    assert [p.kind for p in by_name["mm0"].parts] == ["gemm"]
    # activation x activation: [20, 48] x [48, 20]
    scores = next(c for c in costs if c.name == "scores" or (c.op_type == "FusedMatMul"))
    assert scores.flops == 2 * 20 * 48 * 20
    assert scores.parts[-1].kind == "bmm" and scores.weight_bytes == 0


def test_int8_matmul_graph_is_costed_as_int8_gemm_plus_quantisation(tmp_path):
    path = quantized(matmul_chain(tmp_path / "chain.onnx", [64, 96, 48]), tmp_path / "chain-int8.onnx")
    costs = onnx_op_costs(path, seq_len=20)
    assert _flops(costs, "gemm", "int8") == 2 * 20 * (64 * 96 + 96 * 48)
    assert _flops(costs, "gemm", "fp32") == 0
    int8_weights = sum(op.weight_bytes for op in costs if op.precision == "int8")
    assert int8_weights >= 64 * 96 + 96 * 48  # one byte per weight (+ scales)
    assert int8_weights < (64 * 96 + 96 * 48) * 2


@pytest.mark.parametrize(("fmt", "precision"), [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32")])
def test_tiny_bert_flops_match_the_analytic_count(tiny_artifacts, fmt, precision):
    art = tiny_artifacts[(fmt, precision)]
    costs, seq = op_costs(art.path, fmt, SEQ)
    assert seq == SEQ
    linear, attention = analytic_bert(SEQ)
    assert _flops(costs, "gemm") == pytest.approx(linear, rel=1e-9)
    assert _flops(costs, "bmm") == pytest.approx(attention, rel=1e-9)
    assert not [c.op_type for c in costs if "unknown" in c.note], "every op has a cost rule and shapes"
    if precision == "int8":
        assert _flops(costs, "gemm", "int8") > 0.5 * linear
    if fmt == "onnx":  # the fused contrib ops are what onnxruntime executes
        types = {c.op_type for c in costs}
        assert {"SkipLayerNormalization", "BiasGelu"} <= types
        assert ("Attention" if precision == "fp32" else "QAttention") in types


def test_onnx_sequence_length_scales_linear_and_quadratic_terms(tiny_artifacts):
    art = tiny_artifacts[("onnx", "fp32")]
    short, _ = op_costs(art.path, "onnx", 16)
    long, _ = op_costs(art.path, "onnx", 64)
    assert _flops(long, "gemm") == pytest.approx(4 * _flops(short, "gemm"))
    assert _flops(long, "bmm") == pytest.approx(16 * _flops(short, "bmm"))


def test_tflite_static_sequence_length_is_enforced(tiny_artifacts):
    art = tiny_artifacts[("tflite", "fp32")]
    costs, seq = tflite_op_costs(art.path)
    assert seq == SEQ and costs
    with pytest.raises(UserError, match="static TFLite model for seq_len 24"):
        op_costs(art.path, "tflite", 64)


# ---------------------------------------------------------------------------------------------
# Roofline on devices
# ---------------------------------------------------------------------------------------------


def test_int8_is_predicted_faster_than_fp32_on_a_dot_product_device(tmp_path, fixed_host):
    fp32 = matmul_chain(tmp_path / "big.onnx", [384, 1536, 384, 1536, 384])
    int8 = quantized(fp32, tmp_path / "big-int8.onnx")
    profile = load_profile("pixel4")
    assert all(c.dot_product for c in profile.cpu_clusters)
    e32 = estimate_artifact(fp32, "onnx", "fp32", profile, seq_len=128)
    e8 = estimate_artifact(int8, "onnx", "int8", profile, seq_len=128)
    assert e8.total_ms < 0.6 * e32.total_ms
    assert e8.provenance == e32.provenance == ESTIMATED_DEVICE
    assert e8.assumptions["device_nominal_int8_gops"]["value"] == pytest.approx(4 * e8.assumptions["device_nominal_fp32_gflops"]["value"])


def test_double_clock_is_about_twice_as_fast_when_compute_bound(tmp_path, fixed_host):
    path = matmul_chain(tmp_path / "big.onnx", [512, 2048, 512, 2048, 512])
    base = load_profile("raspberry-pi-5")
    fast = copy.deepcopy(base)
    for cl in fast.cpu_clusters:
        cl.ghz *= 2
    slow_e = estimate_artifact(path, "onnx", "fp32", base, seq_len=256)
    fast_e = estimate_artifact(path, "onnx", "fp32", fast, seq_len=256)
    compute = [(a, b) for a, b in zip(slow_e.per_op, fast_e.per_op, strict=True) if a.bound == "compute" and a.flops > 1e8]
    assert len(compute) >= 4
    for a, b in compute:
        assert a.ms / b.ms == pytest.approx(2.0, rel=0.15), a.name
    assert slow_e.total_ms / fast_e.total_ms == pytest.approx(2.0, rel=0.15)


def test_more_threads_use_more_cores_and_predict_faster(tmp_path, fixed_host):
    path = matmul_chain(tmp_path / "big.onnx", [512, 2048, 512])
    one = estimate_artifact(path, "onnx", "fp32", "pixel4", threads=1, seq_len=128)
    four = estimate_artifact(path, "onnx", "fp32", "pixel4", threads=4, seq_len=128)
    assert four.total_ms < 0.5 * one.total_ms
    assert "Cortex-A76" in four.assumptions["device_cores_used"]["source"]


@pytest.mark.parametrize(
    ("fmt", "precision", "target"), [("onnx", "fp32", "pixel4"), ("onnx", "int8", "host"), ("tflite", "fp32", "raspberry-pi-5")]
)
def test_estimate_on_a_tiny_model_has_positive_per_op_times_summing_to_the_total(tiny_artifacts, fixed_host, fmt, precision, target):
    art = tiny_artifacts[(fmt, precision)]
    est = estimate_artifact(art.path, fmt, precision, target, threads=2, seq_len=SEQ)
    assert est.total_ms > 0
    assert all(o.ms > 0 for o in est.per_op)
    assert sum(o.ms for o in est.per_op) == pytest.approx(est.total_ms)
    assert sum(est.by_op_type.values()) == pytest.approx(est.total_ms)
    assert est.top_ops(3)[0].ms == max(o.ms for o in est.per_op)
    assert est.provenance == (ESTIMATED_HOST if target == "host" else ESTIMATED_DEVICE)
    assert est.method.startswith("roofline per op")
    assert est.seq_len == SEQ and est.threads == 2
    for name, item in est.assumptions.items():
        assert "value" in item and item["source"], name
    data = est.to_json()
    assert data["top_ops"] and data["per_op"]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_profile_without_enough_figures_is_a_user_error(tmp_path, fixed_host):
    path = matmul_chain(tmp_path / "m.onnx", [32, 32])
    unknown_core = load_profile("pixel4").model_copy(deep=True)
    unknown_core.cpu_clusters[0].microarchitecture = "Mystery Core 9000"
    with pytest.raises(UserError, match="no compute figure.*Mystery Core 9000.*fp32_gflops_per_core"):
        estimate_artifact(path, "onnx", "fp32", unknown_core)
    no_bandwidth = load_profile("pixel4").model_copy(deep=True)
    no_bandwidth.throughput.memory_bandwidth_gbs = None
    with pytest.raises(UserError, match="memory_bandwidth_gbs"):
        estimate_artifact(path, "onnx", "fp32", no_bandwidth)
    # an explicit per-core figure replaces the FLOPs/cycle table
    unknown_core.throughput.fp32_gflops_per_core = 20.0
    assert estimate_artifact(path, "onnx", "fp32", unknown_core).total_ms > 0


def test_unsupported_inputs_are_user_errors(tmp_path, fixed_host):
    path = matmul_chain(tmp_path / "m.onnx", [32, 32])
    with pytest.raises(UserError, match="Core ML"):
        estimate_artifact(tmp_path / "m.mlpackage", "coreml", "fp16", "iphone13")
    with pytest.raises(UserError, match="does not exist"):
        estimate_artifact(tmp_path / "missing.onnx", "onnx", "fp32", "host")
    with pytest.raises(UserError, match="unknown device"):
        estimate_artifact(path, "onnx", "fp32", "no-such-phone")


# ---------------------------------------------------------------------------------------------
# Host calibration (real measurement, one quick pass)
# ---------------------------------------------------------------------------------------------


def test_host_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("EDGEKIT_RECALIBRATE", raising=False)
    monkeypatch.setattr(host_peaks, "PASSES", 1)
    cal = host_peaks.host_calibration("onnxruntime", 1)
    assert (tmp_path / "host-calibration.json").is_file()
    p = cal["params"]
    assert all(v > 0 for v in p.values())
    assert 1e9 < p["gemm_fp32"] < 1e13 and p["t_call"] < 1e-2
    assert {m["name"] for m in cal["micro"]} == set(host_peaks.MICROS)
    assert cal["fit_rms_log_error"] < 0.6
    assert "GEMM fp32" in host_peaks.describe(cal)

    def boom(*_a, **_k):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(host_peaks, "measure_calibration", boom)
    assert host_peaks.host_calibration("onnxruntime", 1) == cal
    monkeypatch.setattr(host_peaks, "measure_calibration", lambda runtime, threads: {**cal, "seconds": -1.0})
    assert host_peaks.host_calibration("onnxruntime", 1, force=True)["seconds"] == -1.0
    monkeypatch.setenv("EDGEKIT_RECALIBRATE", "1")
    assert host_peaks.host_calibration("onnxruntime", 1)["seconds"] == -1.0
