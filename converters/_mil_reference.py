"""MIL reference on host, not device kernels: a small numpy interpreter of saved Core ML ML programs.

Core ML models only execute on Apple platforms (`MLModel.predict` is macOS-only). On any other
host this module reads what an `.mlpackage` holds -- the ML program proto (functions -> blocks ->
operations) and the weights in `weights/weight.bin` via coremltools' blob reader -- and executes
the operations one by one in numpy. It checks the exported *graph and weights*; it says nothing
about the numerics or the speed of the device's CPU / GPU / Neural Engine kernels.

Numerics: every op computes in float32 (float64 nowhere) and its result is cast to the dtype the
program declares for that output, so an fp16 program is emulated by rounding each op's result
(and each fp16 constant) to float16; compressed weights (`constexpr_*` ops) are decompressed once
at load time, exactly as declared (int8 * scale, rounded to the op's output dtype). Arithmetic is
IEEE: a program that computes `0 * -inf` yields NaN here, as it would on IEEE hardware.

Only the op set edgekit's exports use is implemented (plus close relatives); an op outside it
raises `UnsupportedMilOp` (a `RuntimeUnavailable`) naming the op when the program is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import RuntimeUnavailable

__all__ = ["ConstInfo", "MilProgram", "UnsupportedMilOp", "erf", "import_coremltools", "quiet_logs", "supported_ops"]

#: Largest finite float16.
FP16_MAX = 65504.0


class UnsupportedMilOp(RuntimeUnavailable, NotImplementedError):
    """The program uses an op (or an op variant) the reference interpreter has no kernel for."""


_QUIET_LOGGERS = ("coremltools", "torch.utils._pytree", "torchao")


@contextlib.contextmanager
def quiet_logs(level: int = logging.CRITICAL):
    """Raise the level of coremltools' (and its imports') loggers for the duration of a block."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, previous, strict=True):
            lg.setLevel(lvl)


_ct: Any = None


def import_coremltools():
    """`import coremltools` without its import-time chatter.

    On import coremltools imports TensorFlow and torchao when they are installed (~10 s here) and
    logs a warning for every dependency version it has not been tested with.
    """
    global _ct
    if _ct is None:
        if "tensorflow" not in sys.modules:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet_logs(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools

        _ct = coremltools
    return _ct


# --------------------------------------------------------------------------------------------
# proto values
# --------------------------------------------------------------------------------------------

# MIL_pb2.DataType enum value -> (numpy dtype used in memory, bits per element as stored, short name)
_DTYPES: dict[int, tuple[Any, int, str]] = {
    1: (np.bool_, 8, "bool"),
    2: (np.object_, 0, "string"),
    10: (np.float16, 16, "fp16"),
    11: (np.float32, 32, "fp32"),
    12: (np.float64, 64, "fp64"),
    21: (np.int8, 8, "int8"),
    22: (np.int16, 16, "int16"),
    23: (np.int32, 32, "int32"),
    24: (np.int64, 64, "int64"),
    25: (np.int8, 4, "int4"),
    31: (np.uint8, 8, "uint8"),
    32: (np.uint16, 16, "uint16"),
    33: (np.uint32, 32, "uint32"),
    34: (np.uint64, 64, "uint64"),
    35: (np.uint8, 4, "uint4"),
    36: (np.uint8, 2, "uint2"),
    37: (np.uint8, 1, "uint1"),
    38: (np.uint8, 6, "uint6"),
    39: (np.uint8, 3, "uint3"),
}

# the `dtype` strings of the `cast` op (and `constexpr_cast`)
_CAST_DTYPES = {
    "fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "int16": np.int16,
    "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_,
}

_BLOB_READERS = {
    "fp16": "read_fp16_data", "fp32": "read_float_data", "int8": "read_int8_data", "uint8": "read_uint8_data",
    "int16": "read_int16_data", "uint16": "read_uint16_data", "int32": "read_int32_data",
    "uint32": "read_uint32_data", "int4": "read_int4_data", "uint4": "read_uint4_data",
    "uint1": "read_uint1_data", "uint2": "read_uint2_data", "uint3": "read_uint3_data", "uint6": "read_uint6_data",
}


@dataclass(frozen=True)
class _TType:
    """A tensor type from the proto: dtype enum and shape (None where a dim is not a constant)."""

    dtype: int
    shape: tuple[int | None, ...] | None

    @property
    def np_dtype(self):
        return _DTYPES[self.dtype][0] if self.dtype in _DTYPES else None

    @property
    def name(self) -> str:
        return _DTYPES[self.dtype][2] if self.dtype in _DTYPES else f"dtype#{self.dtype}"


def _tensor_type(value_type) -> _TType | None:
    if value_type.WhichOneof("type") != "tensorType":
        return None
    tt = value_type.tensorType
    dims = []
    for d in tt.dimensions:
        dims.append(d.constant.size if d.WhichOneof("dimension") == "constant" else None)
    return _TType(tt.dataType, tuple(dims) if tt.rank >= 0 else None)


@dataclass
class _Stored:
    """One array as the package stores it: where, which dtype, how many bytes."""

    dtype: str
    nbytes: int
    in_blob: bool


class _ValueLoader:
    """Turns proto `Value`s (immediate or blob-file) into numpy arrays, remembering what was stored."""

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = weights_dir
        self._readers: dict[str, Any] = {}

    def _reader(self, file_name: str):
        name = file_name.split("/")[-1]
        if name not in self._readers:
            import_coremltools()
            from coremltools.libmilstoragepython import _BlobStorageReader

            path = self.weights_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"weight file {path} referenced by the ML program is missing")
            self._readers[name] = _BlobStorageReader(str(path))
        return self._readers[name]

    def load(self, value) -> tuple[Any, _Stored | None]:
        ttype = _tensor_type(value.type)
        if ttype is None:
            kind = value.type.WhichOneof("type")
            raise UnsupportedMilOp(f"MIL reference: values of type '{kind}' are not supported")
        if ttype.dtype not in _DTYPES:
            raise UnsupportedMilOp(f"MIL reference: dtype {ttype.name} is not supported")
        np_dtype, bits, short = _DTYPES[ttype.dtype]
        shape = tuple(int(d) for d in (ttype.shape or ()))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        which = value.WhichOneof("value")
        if which == "blobFileValue":
            method = _BLOB_READERS.get(short)
            if method is None:
                raise UnsupportedMilOp(f"MIL reference: blob-stored dtype {short} is not supported")
            raw = getattr(self._reader(value.blobFileValue.fileName), method)(value.blobFileValue.offset)
            arr = np.asarray(raw)
            if short == "fp16":
                arr = np.frombuffer(arr.tobytes(), np.float16)
            arr = arr.astype(np_dtype, copy=False).reshape(shape)
            return arr, _Stored(short, math.ceil(count * bits / 8), True)
        if which != "immediateValue":
            raise UnsupportedMilOp(f"MIL reference: value kind '{which}' is not supported")
        imm = value.immediateValue
        if imm.WhichOneof("value") != "tensor":
            raise UnsupportedMilOp(f"MIL reference: immediate '{imm.WhichOneof('value')}' values are not supported")
        tensor = imm.tensor
        kind = tensor.WhichOneof("value")
        if short == "string":
            strings = list(tensor.strings.values)
            return (strings[0] if not shape and strings else np.array(strings, dtype=object).reshape(shape)), None
        if kind == "bytes":
            if bits < 8:
                raise UnsupportedMilOp(f"MIL reference: immediate sub-byte ({short}) values are not supported")
            arr = np.frombuffer(tensor.bytes.values, dtype=np_dtype)
        elif kind is None:
            arr = np.zeros((0,), dtype=np_dtype)
        else:
            arr = np.array(list(getattr(tensor, kind).values))
        arr = arr.astype(np_dtype).reshape(shape)
        return arr, _Stored(short, math.ceil(count * bits / 8), False)


# --------------------------------------------------------------------------------------------
# program structure
# --------------------------------------------------------------------------------------------


@dataclass
class _Op:
    type: str
    name: str
    inputs: dict[str, list[tuple[str, Any]]]  # param -> [("name", var) | ("value", array)]
    outputs: list[tuple[str, _TType | None]]
    attrs: dict[str, Any]
    blocks: list[_Block]


@dataclass
class _Block:
    inputs: list[tuple[str, _TType | None]]
    ops: list[_Op]
    outputs: list[str]


@dataclass
class ConstInfo:
    """A constant of the program as stored in the package.

    `op_type` is `const` or the `constexpr_*` op that decompresses it at load time; `parts` holds
    every stored array behind it (e.g. int8 data + fp16 scale + int8 zero point), and
    `stored_bytes` their sum. `dtype` is the dtype of the largest stored part ("int8", "fp16"...).
    """

    name: str
    op_type: str
    dtype: str
    shape: tuple[int, ...]
    stored_bytes: int
    parts: dict[str, _Stored] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


class _Args:
    """The resolved inputs of one op, with typed accessors for kernels."""

    def __init__(self, op: _Op, values: dict[str, list[Any]]) -> None:
        self.op = op
        self._values = values

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def list(self, name: str) -> list[Any]:
        return self._values.get(name, [])

    def get(self, name: str, default: Any = None) -> Any:
        vals = self._values.get(name)
        return default if not vals else vals[0]

    def __getitem__(self, name: str) -> Any:
        vals = self._values.get(name)
        if not vals:
            raise ValueError(f"MIL reference: op {self.op.type} '{self.op.name}' lacks input '{name}'")
        return vals[0]

    def int(self, name: str, default: int | None = None) -> int:
        val = self.get(name)
        return default if val is None else int(np.asarray(val).reshape(()))

    def float(self, name: str, default: float | None = None) -> float:
        val = self.get(name)
        return default if val is None else float(np.asarray(val).reshape(()))

    def bool(self, name: str, default: bool = False) -> bool:
        val = self.get(name)
        return default if val is None else bool(np.asarray(val).reshape(()))

    def ints(self, name: str, default: list[int] | None = None) -> list[int] | None:
        val = self.get(name)
        return default if val is None else [int(v) for v in np.asarray(val).reshape(-1)]

    def bools(self, name: str) -> list[bool] | None:
        val = self.get(name)
        return None if val is None else [bool(v) for v in np.asarray(val).reshape(-1)]

    def str(self, name: str, default: str | None = None) -> str | None:
        val = self.get(name)
        if val is None:
            return default
        return val if isinstance(val, str) else str(np.asarray(val).reshape(-1)[0])


Kernel = Callable[[_Args], Any]
_KERNELS: dict[str, Kernel] = {}
_CONSTEXPR: dict[str, Kernel] = {}
_CONTROL_FLOW = ("cond", "while_loop")


def _kernel(*names: str, table: dict[str, Kernel] = _KERNELS) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for name in names:
            table[name] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """Every op type the interpreter can execute (`const` included)."""
    return sorted({"const", *_KERNELS, *_CONSTEXPR, *_CONTROL_FLOW})


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


def _f(x: Any) -> np.ndarray:
    """Float inputs compute in float32 (fp16 values are held as exactly-representable float32)."""
    arr = np.asarray(x)
    return arr.astype(np.float32) if arr.dtype.kind == "f" and arr.dtype != np.float32 else arr


_A1, _A2, _A3, _A4, _A5, _P = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429, 0.3275911


def _erf_numpy(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), computed in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    t = 1.0 / (1.0 + _P * np.abs(x64))
    y = 1.0 - (((((_A5 * t + _A4) * t) + _A3) * t + _A2) * t + _A1) * t * np.exp(-x64 * x64)
    return np.sign(x64) * y


_erf_impl: Callable[[np.ndarray], np.ndarray] | None = None


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise erf as float32 (scipy's, exact to float precision; A&S 7.1.26 without scipy)."""
    global _erf_impl
    if _erf_impl is None:
        try:  # scipy is installed with litert-torch
            from scipy.special import erf as scipy_erf

            _erf_impl = scipy_erf
        except ImportError:  # pragma: no cover - depends on the environment
            _erf_impl = _erf_numpy
    return np.asarray(_erf_impl(np.asarray(x, dtype=np.float32)), dtype=np.float32)


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "floor_div": np.floor_divide, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "mod": np.mod, "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


def _binary(name: str) -> Kernel:
    fn = _BINARY[name]

    def run(a: _Args) -> np.ndarray:
        return fn(_f(a["x"]), _f(a["y"]))

    return run


for _name in _BINARY:
    _KERNELS[_name] = _binary(_name)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs, "exp": np.exp, "exp2": np.exp2, "sqrt": np.sqrt, "tanh": np.tanh, "sigmoid": _sigmoid,
    "erf": erf, "relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6),
    "silu": lambda x: x * _sigmoid(x), "softplus": lambda x: np.logaddexp(0, x), "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "floor": np.floor, "ceil": np.ceil, "round": np.round, "sign": np.sign, "square": np.square,
    "logical_not": np.logical_not, "identity": lambda x: x, "softsign": lambda x: x / (1 + np.abs(x)),
}


def _unary(name: str) -> Kernel:
    fn = _UNARY[name]

    def run(a: _Args) -> np.ndarray:
        return fn(_f(a["x"]))

    return run


for _name in _UNARY:
    _KERNELS[_name] = _unary(_name)


@_kernel("log")
def _log(a: _Args) -> np.ndarray:
    return np.log(_f(a["x"]) + a.float("epsilon", 1e-45))


@_kernel("rsqrt")
def _rsqrt(a: _Args) -> np.ndarray:
    return 1.0 / np.sqrt(_f(a["x"]) + a.float("epsilon", 1e-12))


@_kernel("inverse")
def _inverse(a: _Args) -> np.ndarray:
    return 1.0 / (_f(a["x"]) + a.float("epsilon", 1e-4))


@_kernel("leaky_relu")
def _leaky_relu(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    return np.where(x >= 0, x, a.float("alpha", 0.01) * x)


@_kernel("elu")
def _elu(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    return np.where(x > 0, x, a.float("alpha", 1.0) * (np.exp(x) - 1))


@_kernel("clip")
def _clip(a: _Args) -> np.ndarray:
    return np.clip(_f(a["x"]), _f(a["alpha"]), _f(a["beta"]))


@_kernel("gelu")
def _gelu(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    mode = a.str("mode", "EXACT")
    if mode == "EXACT":
        return 0.5 * x * (1.0 + erf(x / np.float32(math.sqrt(2.0))))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise UnsupportedMilOp(f"MIL reference: gelu mode {mode!r} is not supported")


@_kernel("softmax")
def _softmax(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    axis = a.int("axis", -1)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


@_kernel("layer_norm")
def _layer_norm(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    axes = a.ints("axes") or list(range(x.ndim))
    axes = sorted(ax % x.ndim for ax in axes)
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = np.square(x - mean).mean(axis=tuple(axes), keepdims=True)
    y = (x - mean) / np.sqrt(var + a.float("epsilon", 1e-5))
    bshape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if a.get("gamma") is not None:
        y = y * _f(a["gamma"]).reshape(bshape)
    if a.get("beta") is not None:
        y = y + _f(a["beta"]).reshape(bshape)
    return y


@_kernel("linear")
def _linear(a: _Args) -> np.ndarray:
    y = np.matmul(_f(a["x"]), _f(a["weight"]).T)
    return y + _f(a["bias"]) if a.get("bias") is not None else y


@_kernel("matmul")
def _matmul(a: _Args) -> np.ndarray:
    x, y = _f(a["x"]), _f(a["y"])
    if a.bool("transpose_x") and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.bool("transpose_y") and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@_kernel("scaled_dot_product_attention")
def _sdpa(a: _Args) -> np.ndarray:
    q, k, v = _f(a["query"]), _f(a["key"]), _f(a["value"])
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(math.sqrt(q.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + _f(mask)
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores)
    return np.matmul(e / np.sum(e, axis=-1, keepdims=True), v)


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def run(a: _Args) -> np.ndarray:
        x = _f(a["x"])
        axes = a.ints("axes")
        return fn(x, axis=None if axes is None else tuple(axes), keepdims=a.bool("keep_dims"))

    return run


_REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.logaddexp.reduce(x, axis=axis, keepdims=keepdims)
    if axis is None or len(axis) == 1 else np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}
for _name, _fn in _REDUCTIONS.items():
    _KERNELS[_name] = _reduce(_fn)


@_kernel("reduce_argmax", "reduce_argmin")
def _reduce_arg(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    axis = a.int("axis", -1)
    fn = np.argmax if a.op.type == "reduce_argmax" else np.argmin
    return fn(x, axis=axis, keepdims=a.bool("keep_dims"))


@_kernel("cast")
def _cast(a: _Args) -> np.ndarray:
    dtype = a.str("dtype")
    if dtype not in _CAST_DTYPES:
        raise UnsupportedMilOp(f"MIL reference: cast to {dtype!r} is not supported")
    return np.asarray(a["x"]).astype(_CAST_DTYPES[dtype])


@_kernel("select")
def _select(a: _Args) -> np.ndarray:
    return np.where(np.asarray(a["cond"]).astype(bool), _f(a["a"]), _f(a["b"]))


@_kernel("reshape")
def _reshape(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = a.ints("shape")
    out = []
    for i, d in enumerate(shape):
        if d == 0:  # copy the matching dim, aligned from the right (iOS17 semantics; iOS15 requires equal rank)
            j = x.ndim - (len(shape) - i)
            out.append(x.shape[j] if j >= 0 else 1)
        else:
            out.append(d)
    return x.reshape(out)


@_kernel("reshape_like")
def _reshape_like(a: _Args) -> np.ndarray:
    return np.asarray(a["x"]).reshape(np.asarray(a["ref_tensor"]).shape)


@_kernel("transpose")
def _transpose(a: _Args) -> np.ndarray:
    return np.transpose(np.asarray(a["x"]), a.ints("perm"))


@_kernel("expand_dims")
def _expand_dims(a: _Args) -> np.ndarray:
    return np.expand_dims(np.asarray(a["x"]), tuple(a.ints("axes")))


@_kernel("squeeze")
def _squeeze(a: _Args) -> np.ndarray:
    axes = a.ints("axes")
    x = np.asarray(a["x"])
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(axes))


@_kernel("tile")
def _tile(a: _Args) -> np.ndarray:
    return np.tile(np.asarray(a["x"]), a.ints("reps"))


@_kernel("concat")
def _concat(a: _Args) -> np.ndarray:
    values = [np.asarray(v) for v in a.list("values")]
    axis = a.int("axis")
    if a.bool("interleave"):
        stacked = np.stack(values, axis=(axis % values[0].ndim) + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@_kernel("stack")
def _stack(a: _Args) -> np.ndarray:
    return np.stack([np.asarray(v) for v in a.list("values")], axis=a.int("axis", 0))


@_kernel("split")
def _split(a: _Args) -> tuple[np.ndarray, ...]:
    x = np.asarray(a["x"])
    axis = a.int("axis")
    sizes = a.ints("split_sizes")
    if sizes is None:
        return tuple(np.split(x, a.int("num_splits"), axis=axis))
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@_kernel("slice_by_index")
def _slice_by_index(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    rank = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride") or [1] * rank
    begin_mask = a.bools("begin_mask") or [False] * rank
    end_mask = a.bools("end_mask") or [False] * rank
    squeeze_mask = a.bools("squeeze_mask") or [False] * rank
    slices = []
    for i in range(rank):
        if squeeze_mask[i]:
            slices.append(begin[i])
            continue
        slices.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return x[tuple(slices)]


@_kernel("slice_by_size")
def _slice_by_size(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    begin, size = a.ints("begin"), a.ints("size")
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]


def _gather_batched(x: np.ndarray, indices: np.ndarray, axis: int, batch_dims: int) -> np.ndarray:
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    return np.stack([_gather_batched(x[i], indices[i], axis - 1, batch_dims - 1) for i in range(x.shape[0])])


@_kernel("gather")
def _gather(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    indices = np.asarray(a["indices"]).astype(np.int64)
    axis = a.int("axis", 0) % x.ndim
    return _gather_batched(x, indices, axis, a.int("batch_dims", 0))


@_kernel("gather_along_axis")
def _gather_along_axis(a: _Args) -> np.ndarray:
    return np.take_along_axis(np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64), axis=a.int("axis", 0))


@_kernel("gather_nd")
def _gather_nd(a: _Args) -> np.ndarray:
    if a.int("batch_dims", 0) != 0:
        raise UnsupportedMilOp("MIL reference: gather_nd with batch_dims > 0 is not supported")
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    return x[tuple(np.moveaxis(idx, -1, 0))]


@_kernel("shape")
def _shape(a: _Args) -> np.ndarray:
    return np.array(np.asarray(a["x"]).shape, dtype=np.int32)


@_kernel("fill")
def _fill(a: _Args) -> np.ndarray:
    return np.full(a.ints("shape"), a.get("value", 0.0))


@_kernel("fill_like")
def _fill_like(a: _Args) -> np.ndarray:
    return np.full(np.asarray(a["ref_tensor"]).shape, a.get("value", 0.0))


@_kernel("range_1d")
def _range_1d(a: _Args) -> np.ndarray:
    return np.arange(np.asarray(a["start"]), np.asarray(a["end"]), np.asarray(a["step"]))


@_kernel("band_part")
def _band_part(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    lower, upper = a.int("lower", -1), a.int("upper", -1)
    m, n = x.shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = np.ones((m, n), dtype=bool)
    if lower >= 0:
        keep &= (i - j) <= lower
    if upper >= 0:
        keep &= (j - i) <= upper
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


@_kernel("cumsum")
def _cumsum(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    axis = a.int("axis", 0)
    if a.bool("reverse"):
        x = np.flip(x, axis=axis)
    out = np.cumsum(x, axis=axis)
    if a.bool("exclusive"):
        out = out - x
    return np.flip(out, axis=axis) if a.bool("reverse") else out


@_kernel("one_hot")
def _one_hot(a: _Args) -> np.ndarray:
    idx = np.asarray(a["indices"]).astype(np.int64)
    depth = a.int("one_hot_vector_size")
    axis = a.int("axis", -1)
    hot = idx[..., None] == np.arange(depth)
    out = np.where(hot, a.get("on_value", 1), a.get("off_value", 0))
    return np.moveaxis(out, -1, axis)


@_kernel("pad")
def _pad(a: _Args) -> np.ndarray:
    x = np.asarray(a["x"])
    pads = a.ints("pad")
    n = len(pads) // 2
    width = [(0, 0)] * (x.ndim - n) + [(pads[2 * i], pads[2 * i + 1]) for i in range(n)]
    mode = a.str("mode", "constant")
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=a.float("constant_val", 0.0))
    if mode in ("reflect", "replicate"):
        return np.pad(x, width, mode="reflect" if mode == "reflect" else "edge")
    raise UnsupportedMilOp(f"MIL reference: pad mode {mode!r} is not supported")


@_kernel("topk")
def _topk(a: _Args) -> tuple[np.ndarray, np.ndarray]:
    x = _f(a["x"])
    k, axis = a.int("k", 1), a.int("axis", -1)
    order = np.argsort(x if a.bool("ascending") else -x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int32)


@_kernel("argsort")
def _argsort(a: _Args) -> np.ndarray:
    x = _f(a["x"])
    return np.argsort(x if a.bool("ascending") else -x, axis=a.int("axis", -1), kind="stable")


@_kernel("non_zero")
def _non_zero(a: _Args) -> np.ndarray:
    return np.argwhere(np.asarray(a["x"]))


# --- compressed constants (evaluated once at load time) ---------------------------------------


def _per_axis(param: np.ndarray, axis: int, rank: int) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis] = param.size
    return param.reshape(shape)


@_kernel("constexpr_affine_dequantize", table=_CONSTEXPR)
def _affine_dequantize(a: _Args) -> np.ndarray:
    q = np.asarray(a["quantized_data"]).astype(np.float32)
    axis = a.int("axis", 0) % q.ndim
    zp = _per_axis(np.asarray(a["zero_point"]).astype(np.float32), axis, q.ndim)
    scale = _per_axis(_f(a["scale"]), axis, q.ndim)
    return (q - zp) * scale


@_kernel("constexpr_blockwise_shift_scale", table=_CONSTEXPR)
def _blockwise_shift_scale(a: _Args) -> np.ndarray:
    data = np.asarray(a["data"]).astype(np.float32)
    scale = _f(a["scale"])
    offset = a.get("offset")
    offset = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (n, m) in enumerate(zip(data.shape, scale.shape, strict=True)):
        if m != n:
            scale = np.repeat(scale, n // m, axis=axis)
            if offset is not None:
                offset = np.repeat(offset, n // m, axis=axis)
    return (data - offset) * scale if offset is not None else data * scale


@_kernel("constexpr_lut_to_dense", table=_CONSTEXPR)
def _lut_to_dense(a: _Args) -> np.ndarray:
    from coremltools.optimize import _utils as optimize_utils

    lut = _f(a["lut"])
    indices = np.asarray(a["indices"])
    if "shape" in a:  # iOS16 form: flat lut, bit-packed uint8 indices, explicit shape
        shape = a.ints("shape")
        nbits = int(np.log2(lut.size))
        flat = optimize_utils.restore_elements_from_packed_bits(indices, nbits, int(np.prod(shape)))
        return lut[flat].reshape(shape)
    vector_axis = a.get("vector_axis")
    return optimize_utils.lut_to_dense(indices, lut, None if vector_axis is None else int(vector_axis))


@_kernel("constexpr_sparse_to_dense", table=_CONSTEXPR)
def _sparse_to_dense(a: _Args) -> np.ndarray:
    """iOS16 sparse weights: non-zero values in order + a little-endian bitmask of where they go."""
    data = np.asarray(a["nonzero_data"])
    shape = a.ints("shape")
    dense = np.zeros(int(np.prod(shape)), dtype=data.dtype)
    bits = np.unpackbits(np.asarray(a["mask"], dtype=np.uint8), bitorder="little")[: dense.size]
    dense[np.flatnonzero(bits)] = data
    return dense.reshape(shape)


@_kernel("constexpr_cast", table=_CONSTEXPR)
def _constexpr_cast(a: _Args) -> np.ndarray:
    return np.asarray(a["source_val"]).astype(_CAST_DTYPES[a.str("output_dtype")])


# --------------------------------------------------------------------------------------------
# the program
# --------------------------------------------------------------------------------------------

_controller: Any = None


def _blas_threads(n: int | None):
    """Limit BLAS threads for a block (threadpoolctl when installed, else a no-op).

    The programs' matmuls are small ([seq, hidden] x [hidden, hidden]); multithreaded OpenBLAS
    gains nothing on them and, on a loaded 2-core host, its spinning threads made a MiniLM run
    5-8x slower (0.7-1.3 s instead of 0.16 s).
    """
    global _controller
    if n is None:
        return contextlib.nullcontext()
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl is optional
            _controller = False
    return _controller.limit(limits=n, user_api="blas") if _controller else contextlib.nullcontext()



def _store_as(value: np.ndarray, ttype: _TType | None) -> np.ndarray:
    """Cast a result to its declared dtype; float16 results are kept as (exact) float32."""
    if ttype is None or ttype.np_dtype is None or ttype.np_dtype is np.object_:
        return value
    arr = np.asarray(value)
    if ttype.np_dtype is np.float16:
        return arr.astype(np.float16).astype(np.float32)
    return arr.astype(ttype.np_dtype, copy=False)


class MilProgram:
    """One function of a saved ML program, ready to interpret.

    `MilProgram.load(path)` reads an `.mlpackage` (or `.mlmodel`); `run(inputs)` executes it on
    numpy arrays; `constants` / `const_info` expose every (decompressed) weight and how it is stored.
    `blas_threads` caps BLAS threads while running (1 by default; None leaves them alone).
    """

    blas_threads: int | None = 1

    def __init__(self, spec, weights_dir: Path, function: str = "main") -> None:
        if spec.WhichOneof("Type") != "mlProgram":
            raise UnsupportedMilOp("MIL reference: the model is not an ML program (neural network models are not supported)")
        program = spec.mlProgram
        if function not in program.functions:
            raise ValueError(f"ML program has no function {function!r} (has {sorted(program.functions)})")
        self.spec_version = int(spec.specificationVersion)
        self.description = spec.description
        func = program.functions[function]
        self.opset = func.opset
        self.inputs: dict[str, _TType] = {}
        for nv in func.inputs:
            ttype = _tensor_type(nv.type)
            if ttype is None:
                raise UnsupportedMilOp(f"MIL reference: function input {nv.name!r} is not a tensor")
            self.inputs[nv.name] = ttype
        self._loader = _ValueLoader(weights_dir)
        self.constants: dict[str, np.ndarray] = {}
        self.const_info: dict[str, ConstInfo] = {}
        self._types: dict[str, _TType | None] = dict(self.inputs)
        self.block = self._parse_block(func.block_specializations[self.opset], [])
        self.outputs = list(self.block.outputs)
        self._check_supported(self.block)

    @classmethod
    def load(cls, path: str | Path, function: str = "main") -> MilProgram:
        """Read a saved `.mlpackage` without compiling it (works on any OS)."""
        ct = import_coremltools()
        with quiet_logs():
            model = ct.models.MLModel(str(path), skip_model_load=True)
        return cls(model.get_spec(), Path(model.weights_dir or Path(path)), function)

    # -- parsing ---------------------------------------------------------------------------

    def _parse_block(self, block_spec, inputs: list[tuple[str, _TType | None]]) -> _Block:
        ops = []
        for op_spec in block_spec.operations:
            op, stored = self._parse_op(op_spec)
            if op.type == "const" or op.type.startswith("constexpr_"):
                self._eval_constant(op, stored)
            else:
                ops.append(op)
        return _Block(inputs, ops, list(block_spec.outputs))

    def _parse_op(self, op_spec) -> tuple[_Op, dict[str, _Stored]]:
        outputs = [(o.name, _tensor_type(o.type)) for o in op_spec.outputs]
        for name, ttype in outputs:
            self._types[name] = ttype
        attrs: dict[str, Any] = {}
        stored: dict[str, _Stored] = {}
        for key, value in op_spec.attributes.items():
            attrs[key], info = self._loader.load(value)
            if info is not None:
                stored[key] = info
        inputs: dict[str, list[tuple[str, Any]]] = {}
        for key, arg in op_spec.inputs.items():
            bindings = []
            for binding in arg.arguments:
                kind = binding.WhichOneof("binding")
                if kind == "name":
                    bindings.append(("name", binding.name))
                else:
                    val, info = self._loader.load(binding.value)
                    if info is not None:
                        stored[key] = info
                    bindings.append(("value", val))
            inputs[key] = bindings
        blocks = []
        for block_spec in op_spec.blocks:
            block_inputs = [(nv.name, _tensor_type(nv.type)) for nv in block_spec.inputs]
            for name, ttype in block_inputs:
                self._types[name] = ttype
            blocks.append(self._parse_block(block_spec, block_inputs))
        name = attrs.get("name")
        op = _Op(op_spec.type, name if isinstance(name, str) else (outputs[0][0] if outputs else "?"),
                 inputs, outputs, attrs, blocks)
        return op, stored

    def _eval_constant(self, op: _Op, stored: dict[str, _Stored]) -> None:
        params = {k: v for k, v in op.attrs.items() if k != "name"}
        for key, bindings in op.inputs.items():
            vals = []
            for kind, val in bindings:
                if kind == "name":
                    if val not in self.constants:
                        raise UnsupportedMilOp(f"MIL reference: {op.type} '{op.name}' reads non-constant {val!r}")
                    vals.append(self.constants[val])
                    for part_key, part in self.const_info[val].parts.items():
                        stored[f"{key}.{part_key}"] = part
                else:
                    vals.append(val)
            params[key] = vals[0] if len(vals) == 1 else vals
        if op.type == "const":
            if "val" not in params:
                raise ValueError(f"const op '{op.name}' has no value")
            values: tuple[Any, ...] = (params["val"],)
        else:
            kernel = _CONSTEXPR.get(op.type)
            if kernel is None:
                raise UnsupportedMilOp(
                    f"MIL reference interpreter has no kernel for op '{op.type}' ('{op.name}'); "
                    f"supported: {', '.join(supported_ops())}"
                )
            result = kernel(_Args(op, {k: [v] for k, v in params.items()}))
            values = result if isinstance(result, tuple) else (result,)
        raw = {k: np.asarray(v) for k, v in params.items() if isinstance(v, np.ndarray)}
        for (name, ttype), value in zip(op.outputs, values, strict=True):
            self.constants[name] = value if isinstance(value, str) else _store_as(value, ttype)
            largest = max(stored.values(), key=lambda s: s.nbytes, default=None)
            self.const_info[name] = ConstInfo(
                name=name, op_type=op.type, dtype=largest.dtype if largest else (ttype.name if ttype else "?"),
                shape=tuple(np.shape(value)), stored_bytes=sum(s.nbytes for s in stored.values()),
                parts=dict(stored), params=raw if op.type != "const" else {},
            )

    def _check_supported(self, block: _Block) -> None:
        for op in block.ops:
            if op.type not in _KERNELS and op.type not in _CONTROL_FLOW:
                raise UnsupportedMilOp(
                    f"MIL reference interpreter has no kernel for op '{op.type}' ('{op.name}'); "
                    f"supported: {', '.join(supported_ops())}"
                )
            for sub in op.blocks:
                self._check_supported(sub)

    # -- inspection ------------------------------------------------------------------------

    def op_histogram(self) -> dict[str, int]:
        """Op types and counts, nested blocks included; constants counted by their op type."""
        counts: Counter[str] = Counter(info.op_type for info in self.const_info.values())

        def walk(block: _Block) -> None:
            for op in block.ops:
                counts[op.type] += 1
                for sub in op.blocks:
                    walk(sub)

        walk(self.block)
        return dict(sorted(counts.items()))

    def iter_ops(self) -> Iterable[_Op]:
        def walk(block: _Block):
            for op in block.ops:
                yield op
                for sub in op.blocks:
                    yield from walk(sub)

        return walk(self.block)

    def output_types(self) -> dict[str, _TType | None]:
        return {name: self._types.get(name) for name in self.outputs}

    def gather_tables(self) -> list[str]:
        """Names of the constants used as the table (`x`) of a gather: the embedding tables."""
        names = []
        for op in self.iter_ops():
            if op.type in ("gather", "gather_along_axis", "gather_nd"):
                for kind, val in op.inputs.get("x", []):
                    if kind == "name" and val in self.const_info and val not in names:
                        names.append(val)
        return names

    # -- execution -------------------------------------------------------------------------

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the function on named inputs (cast to the declared dtypes, shapes must match)."""
        env: dict[str, Any] = dict(self.constants)
        for name, ttype in self.inputs.items():
            if name not in inputs:
                raise ValueError(f"missing input {name!r}; the program takes {list(self.inputs)}")
            arr = np.asarray(inputs[name])
            if ttype.shape is not None and all(d is not None for d in ttype.shape) and arr.shape != ttype.shape:
                raise ValueError(f"input {name!r} has shape {arr.shape}; the program expects {ttype.shape}")
            env[name] = _store_as(arr, ttype)
        with np.errstate(all="ignore"), _blas_threads(self.blas_threads):
            outs = self._run_block(self.block, env)
        result = {}
        for name, value in zip(self.outputs, outs, strict=True):
            ttype = self._types.get(name)
            arr = np.asarray(value)
            result[name] = arr.astype(ttype.np_dtype) if ttype is not None and ttype.np_dtype is not None else arr
        return result

    def _resolve(self, op: _Op, env: dict[str, Any]) -> dict[str, list[Any]]:
        values: dict[str, list[Any]] = {}
        for key, bindings in op.inputs.items():
            values[key] = [env[val] if kind == "name" else val for kind, val in bindings]
        return values

    def _run_block(self, block: _Block, env: dict[str, Any]) -> list[Any]:
        for op in block.ops:
            if op.type == "cond":
                results = self._run_cond(op, env)
            elif op.type == "while_loop":
                results = self._run_while(op, env)
            else:
                out = _KERNELS[op.type](_Args(op, self._resolve(op, env)))
                results = list(out) if isinstance(out, tuple) else [out]
            if len(results) != len(op.outputs):
                raise RuntimeError(f"MIL reference: op {op.type} '{op.name}' gave {len(results)} outputs, "
                                   f"the program declares {len(op.outputs)}")
            for (name, ttype), value in zip(op.outputs, results, strict=True):
                env[name] = _store_as(value, ttype)
        return [env[name] for name in block.outputs]

    def _run_cond(self, op: _Op, env: dict[str, Any]) -> list[Any]:
        pred = bool(np.asarray(self._resolve(op, env)["pred"][0]).reshape(()))
        return self._run_block(op.blocks[0 if pred else 1], dict(env))

    def _run_while(self, op: _Op, env: dict[str, Any]) -> list[Any]:
        cond_block, body_block = op.blocks
        loop_vars = list(self._resolve(op, env)["loop_vars"])
        for _ in range(1_000_000):
            scope = dict(env)
            scope.update({name: v for (name, _), v in zip(cond_block.inputs, loop_vars, strict=True)})
            if not bool(np.asarray(self._run_block(cond_block, scope)[0]).reshape(())):
                return loop_vars
            scope = dict(env)
            scope.update({name: v for (name, _), v in zip(body_block.inputs, loop_vars, strict=True)})
            loop_vars = self._run_block(body_block, scope)
        raise RuntimeError(f"MIL reference: while_loop '{op.name}' did not stop after 1e6 iterations")

