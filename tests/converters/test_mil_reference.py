"""The numpy MIL reference interpreter on small hand-built ML programs (saved, then read back)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from converters._mil_reference import (
    MilProgram,
    UnsupportedMilOp,
    _erf_numpy,
    erf,
    import_coremltools,
    supported_ops,
)
from converters.base import RuntimeUnavailable

ct = import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

RNG = np.random.default_rng(0)


def _save_and_load(prog, tmp_path, precision="fp32", target=None) -> MilProgram:
    from converters.coreml import _quiet_conversion

    with _quiet_conversion():
        model = ct.convert(
            prog, convert_to="mlprogram", minimum_deployment_target=target or ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,
        )
        path = tmp_path / "p.mlpackage"
        model.save(str(path))
    return MilProgram.load(path)


def test_tensor_ops_match_numpy(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4)), mb.TensorSpec(shape=(2, 5), dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def prog(x, idx):
        sliced = mb.slice_by_index(x=x, begin=[0, 1, 0], end=[1, 3, 4], stride=[1, 1, 2],
                                   begin_mask=[False, False, True], end_mask=[False, True, False],
                                   squeeze_mask=[True, False, False])
        inter = mb.concat(values=[x, mb.mul(x=x, y=-1.0)], axis=1, interleave=True)
        ln = mb.layer_norm(x=x, axes=[1], gamma=np.arange(1, 4, dtype=np.float32),
                           beta=np.full(3, 0.5, np.float32), epsilon=1e-5)
        _, tail = mb.split(x=x, split_sizes=[1, 3], axis=2)
        gathered = mb.gather(x=mb.reshape(x=x, shape=[2, 12]), indices=mb.mod(x=idx, y=12), axis=1, batch_dims=1)
        perm = mb.transpose(x=x, perm=[0, -1, 1])
        mm = mb.matmul(x=x, y=x, transpose_x=False, transpose_y=True)
        red = mb.reduce_l2_norm(x=x, axes=[-1], keep_dims=True)
        soft = mb.softmax(x=x, axis=1)
        sel = mb.select(cond=mb.greater(x=x, y=0.5), a=x, b=mb.clip(x=x, alpha=0.1, beta=0.2))
        tiled = mb.tile(x=mb.expand_dims(x=mb.reduce_mean(x=x, axes=[2]), axes=[-1]), reps=[1, 1, 2])
        return sliced, inter, ln, tail, gathered, perm, mm, red, soft, sel, tiled

    program = _save_and_load(prog, tmp_path)
    x = RNG.random((2, 3, 4), dtype=np.float32)
    idx = RNG.integers(0, 30, size=(2, 5)).astype(np.int32)
    got = list(program.run({"x": x, "idx": idx}).values())
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    expected = [
        x[0, 1:, ::2],
        np.stack([x, -x], axis=2).reshape(2, 6, 4),
        (x - mean) / np.sqrt(var + 1e-5) * np.arange(1, 4).reshape(1, 3, 1) + 0.5,
        x[:, :, 1:],
        np.take_along_axis(x.reshape(2, 12), idx % 12, axis=1),
        np.transpose(x, (0, 2, 1)),
        x @ np.swapaxes(x, -1, -2),
        np.sqrt((x**2).sum(-1, keepdims=True)),
        np.exp(x) / np.exp(x).sum(1, keepdims=True),
        np.where(x > 0.5, x, np.clip(x, 0.1, 0.2)),
        np.tile(x.mean(2)[..., None], (1, 1, 2)),
    ]
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=f"output {i}")


def test_activations(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(64,))], opset_version=ct.target.iOS16)
    def prog(x):
        return (mb.gelu(x=x, mode="EXACT"), mb.gelu(x=x, mode="TANH_APPROXIMATION"), mb.tanh(x=x), mb.erf(x=x),
                mb.rsqrt(x=mb.add(x=mb.abs(x=x), y=1.0)), mb.sigmoid(x=x), mb.relu(x=x))

    program = _save_and_load(prog, tmp_path)
    x = np.linspace(-4, 4, 64).astype(np.float32)
    erf_ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    erf_scaled = np.array([math.erf(v / math.sqrt(2)) for v in x.astype(np.float64)])
    expected = [
        0.5 * x * (1 + erf_scaled),
        0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
        np.tanh(x), erf_ref, 1 / np.sqrt(np.abs(x) + 1), 1 / (1 + np.exp(-x)), np.maximum(x, 0),
    ]
    for g, e in zip(program.run({"x": x}).values(), expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_control_flow(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(3,)), mb.TensorSpec(shape=(1,), dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def prog(x, n):
        flag = mb.greater(x=mb.reduce_sum(x=n, axes=[0]), y=0)
        branch = mb.cond(pred=flag, _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: mb.mul(x=x, y=-1.0))
        limit = mb.reduce_sum(x=n, axes=[0])
        _, looped = mb.while_loop(
            _cond=lambda i, acc: mb.less(x=i, y=limit),
            _body=lambda i, acc: (mb.add(x=i, y=1), mb.add(x=acc, y=x)),
            loop_vars=(np.int32(0), mb.mul(x=x, y=0.0)),
        )
        return branch, looped

    program = _save_and_load(prog, tmp_path)
    assert {"cond", "while_loop"} <= set(program.op_histogram())
    x = np.array([1.0, -2.0, 3.5], np.float32)
    for n in (0, 3):
        branch, looped = program.run({"x": x, "n": np.array([n], np.int32)}).values()
        np.testing.assert_array_equal(branch, 2 * x if n > 0 else -x)
        np.testing.assert_allclose(looped, n * x)


def test_fp16_programs_round_every_op(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(256,))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.add(x=mb.mul(x=x, y=3.3), y=0.1)

    program = _save_and_load(prog, tmp_path, precision="fp16")
    assert program.op_histogram().get("cast", 0) >= 2  # fp32 I/O around fp16 compute
    x = RNG.normal(size=256).astype(np.float32)
    (got,) = program.run({"x": x}).values()
    h = np.float16
    expected = (x.astype(h) * h(3.3)).astype(h) + h(0.1)  # numpy rounds each fp16 op's result to fp16
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert not np.array_equal(got, x * np.float32(3.3) + np.float32(0.1))


def test_unknown_op_is_named_at_load(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.batch_norm(x=x, mean=np.zeros(2, np.float32), variance=np.ones(2, np.float32))

    with pytest.raises(UnsupportedMilOp, match="'batch_norm'") as info:
        _save_and_load(prog, tmp_path)
    assert isinstance(info.value, RuntimeUnavailable)  # the verify layer reports it as "not run"
    assert "batch_norm" not in supported_ops()


def test_inputs_are_checked(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4), dtype=types.int32)], opset_version=ct.target.iOS16)
    def prog(ids):
        return mb.mul(x=ids, y=2)

    program = _save_and_load(prog, tmp_path)
    (out,) = program.run({"ids": np.arange(4, dtype=np.int64).reshape(1, 4)}).values()
    assert out.dtype == np.int32 and out.tolist() == [[0, 2, 4, 6]]
    with pytest.raises(ValueError, match="shape"):
        program.run({"ids": np.zeros((1, 5), np.int32)})
    with pytest.raises(ValueError, match="missing input"):
        program.run({})


def test_erf_is_accurate():
    x = np.linspace(-5, 5, 4001).astype(np.float32)
    ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(erf(x) - ref).max() < 1e-7
    assert np.abs(_erf_numpy(x) - ref).max() < 2e-7  # the fallback without scipy


def test_supported_ops_cover_the_exports():
    needed = {"const", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "gather", "linear",
              "matmul", "add", "sub", "mul", "real_div", "layer_norm", "gelu", "softmax", "reshape", "transpose",
              "cast", "reduce_sum", "reduce_l2_norm", "clip", "expand_dims", "equal", "greater_equal", "select",
              "tile", "slice_by_index", "tanh", "scaled_dot_product_attention", "cond"}
    assert needed <= set(supported_ops())
