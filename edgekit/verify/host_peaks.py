"""This host's own peaks, measured in the artifact's runtime and fitted to the estimator's cost model.

`host_calibration(runtime, threads)` builds small synthetic models (never the models the
estimator is validated on), times them in the same runtime edgekit measures artifacts with
(`get_converter(fmt).runtime(artifact, threads)`), and fits the parameters of
`edgekit.verify.estimate.Machine` (GEMM fp32/int8, batched-MatMul and vector rates, DRAM and
cache bandwidth, per-op / reshape / per-call overheads) so that the estimator's own cost model
explains those timings (least squares on log time).

Micro-benchmarks (same list for onnxruntime and LiteRT; shapes unlike the validated models):
- `call`: one small op; `tiny_chain`: 48 small ops; `reshape_chain`: 24 Reshape + softmax pairs (all on [16, 24]);
  `tiny_attention`: 16 attention ops (ORT `Attention`; LiteRT batched MatMul + softmax) on [1, 8, 16];
- `gemv_dram`: two MatMuls with M=1 and 32 MB of fp32 weights each (weights stream from DRAM);
- `transpose_cache`: Transposes between regrouping Reshapes on [64, 64, 64] (data-movement bandwidth);
  `add_cache`: Adds/Muls on a 1 MB activation (element-wise rate and cache bandwidth);
- `vec_transc` (mostly GELU), `vec_softmax`, `vec_norm` (mostly residual + layer norm; LiteRT decomposes
  it into element-wise ops);
- `gemm_fp32_a|b`, `gemm_int8_a|b`: MatMul chains M=40 192<->384 and M=100 640<->1280, fp32 and
  dynamic int8 quantised with the same tool and settings as the converters; `gemm_*_mix`: M=8 with
  16-32 MB of weights (compute and weight streaming of similar length: fits their overlap p);
- `bmm`: batched activation x activation MatMuls [6, 100, 48] (attention-like).

Timing: at 1 thread the CPU time of the calling thread (both runtimes compute on it), so other
processes time-slicing a shared host do not inflate the figures; at more threads the wall-clock
median. Each micro is timed in `PASSES` interleaved passes and its lowest pass median is kept.

Host clock: `EDGEKIT_HOST_GHZ` if set, else cpufreq's maximum, else /proc/cpuinfo's "cpu MHz" (on a VM
usually the base clock). If the fitted fp32 GEMM rate would exceed `GEMM_EFFICIENCY_CEILING` of the
nominal peak at that clock, the core must be running faster (turbo) and the clock is inferred
from the GEMM rate instead; the calibration records which.

Results are cached in `$EDGEKIT_CACHE_DIR` (default `~/.cache/edgekit`)/host-calibration.json keyed
by CPU model, runtime and version, thread count and calibration schema; `force=True` (or the
environment variable `EDGEKIT_RECALIBRATE=1`) measures again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.verify.estimate import PARAM_NAMES, Machine, Nominal, predict_s
from edgekit.verify.latency import host_description

SCHEMA = 11
#: Best GEMM kernels reach about this fraction of the FMA peak; a higher fitted efficiency means the
#: reported clock is below the real (boost) clock, which is then inferred from the GEMM rate.
GEMM_EFFICIENCY_CEILING = 0.9
#: Share of the host's last-level cache assumed to keep weights between inferences (the rest holds
#: activations and other processes' data; on a VM the L3 is shared with other tenants).
LLC_OCCUPANCY = 0.5
X86_SOURCE = "https://stackoverflow.com/questions/15655835 (2x256-bit FMA = 32 fp32 FLOPs/cycle since Haswell / Zen 2)"


# ---------------------------------------------------------------------------------------------
# Host description
# ---------------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def host_cpu() -> dict[str, Any]:
    """CPU model, reported clock and nominal FLOPs/cycle of one host core (with sources)."""
    info = _cpuinfo()
    desc = host_description()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    machine = platform.machine().lower()
    ghz, ghz_source = None, ""
    env = os.environ.get("EDGEKIT_HOST_GHZ")
    if env:
        ghz, ghz_source = float(env), "EDGEKIT_HOST_GHZ"
    if ghz is None:
        try:
            ghz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
            ghz_source = "cpufreq cpuinfo_max_freq"
        except (OSError, ValueError):
            pass
    if ghz is None and info.get("cpu MHz"):
        ghz, ghz_source = float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    if ghz is None:
        ghz, ghz_source = 3.0, "unknown clock: 3.0 GHz assumed"
    if machine in ("x86_64", "amd64", "i686"):
        intel = "intel" in str(desc["cpu"]).lower()
        if "avx512f" in flags and intel:
            fpc, isa = 64, "avx512"
        elif "fma" in flags and "avx2" in flags:
            fpc, isa = 32, "avx2+fma"
        elif "avx" in flags:
            fpc, isa = 16, "avx"
        else:
            fpc, isa = 8, "sse"
        vnni = bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags)
        i8pc = fpc * (4 if vnni else 2)
        src = f"{isa}{' + VNNI' if vnni else ''}: {fpc} fp32 FLOPs/cycle, int8 {4 if vnni else 2}x ({X86_SOURCE})"
    else:
        from edgekit.verify.estimate import lookup_microarch

        entry = lookup_microarch(str(desc["cpu"]))
        dot = bool({"asimddp", "dotprod"} & flags) or "apple" in str(desc["cpu"]).lower()
        fpc = entry.fp32_flops_per_cycle if entry else 16
        i8pc = (entry.int8_ops_per_cycle_dot if entry else 64) if dot else 2 * fpc
        isa = "arm64" + ("+dotprod" if dot else "")
        src = entry.source if entry else "unknown arm64 core: 2x128-bit NEON FMA assumed"
    llc = 0  # the largest cache level is the last-level cache
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip().upper()
            llc = max(llc, int(size[:-1]) * {"K": 1024, "M": 1024**2}[size[-1]] if size[-1] in "KM" else int(size))
        except (OSError, ValueError, KeyError):
            continue
    return {
        "cpu": desc["cpu"],
        "cores": desc["cores"],
        "llc_bytes": llc,
        "machine": machine,
        "isa": isa,
        "reported_ghz": ghz,
        "ghz_source": ghz_source,
        "fp32_flops_per_cycle": fpc,
        "int8_ops_per_cycle": i8pc,
        "flops_source": src,
    }


def host_cache_bytes(cal: dict[str, Any]) -> float:
    """Bytes of last-level cache assumed to hold weights between inferences on this host."""
    return LLC_OCCUPANCY * float(cal["host"].get("llc_bytes") or 0)


def host_nominal(threads: int, cal: dict[str, Any]) -> Nominal:
    """Nominal fp32/int8 peak of `threads` host cores, at the clock the calibration settled on."""
    h = cal["host"]
    ghz = h["ghz"]
    return Nominal(
        name="host",
        fp32=threads * h["fp32_flops_per_cycle"] * ghz * 1e9,
        int8=threads * h["int8_ops_per_cycle"] * ghz * 1e9,
        ghz=ghz,
        bw_dram=cal["params"]["bw_dram"],
        cores=[],
        sources={
            "fp32_per_core": f"{h['fp32_flops_per_cycle']} FLOPs/cycle x {ghz:.2f} GHz x {threads} thread(s); {h['flops_source']}",
            "int8_per_core": f"{h['int8_ops_per_cycle']} int8 ops/cycle x {ghz:.2f} GHz x {threads} thread(s)",
            "clock": h["ghz_source"],
        },
    )


# ---------------------------------------------------------------------------------------------
# Micro-benchmark models
# ---------------------------------------------------------------------------------------------

#: Small activations for the overhead micro-benchmarks (a short sequence of a narrow model).
SMALL = (16, 24)
GEMM_A = (40, [192, 384, 192, 384, 192, 384, 192])
GEMM_B = (100, [640, 1280, 640, 1280, 640])
GEMV = (1, [2048, 4096, 2048])
#: Few rows and large weights: compute and weight streaming take similar time (fits their overlap).
MIX_FP32 = (8, [1024, 4096, 1024])
MIX_INT8 = (8, [2048, 4096, 2048])
BMM = (6, 100, 48)
VEC = (96, 640)
SOFTMAX = (6, 100, 100)
TRANSPOSE = (64, 64, 64)
CACHE = (256, 1024)


def _onnx_micro(name: str, workdir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    k = [0]

    def const(arr) -> str:
        k[0] += 1
        n = f"c{k[0]}"
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), n))
        return n

    def node(op, ins, domain="", **attrs) -> str:
        k[0] += 1
        out = f"t{k[0]}"
        nodes.append(helper.make_node(op, ins, [out], name=f"n{k[0]}", domain=domain, **attrs))
        return out

    def gemm_chain(m, dims):
        x = "x"
        for a, b in zip(dims[:-1], dims[1:], strict=False):
            x = node("MatMul", [x, const(rng.standard_normal((a, b)) / np.sqrt(a))])
        return (m, dims[0]), x

    if name == "call":
        shape, y = SMALL, node("Add", ["x", const(np.ones(SMALL[1]))])
    elif name == "tiny_chain":
        shape, y = SMALL, "x"
        for _ in range(48):
            y = node("Add", [y, const(np.full(SMALL[1], 0.01))])
    elif name == "reshape_chain":
        shape, y = SMALL, "x"
        for i in range(24):  # a softmax between reshapes keeps the optimiser from folding them away
            target = np.array(SMALL[::-1] if i % 2 == 0 else SMALL, np.int64)
            inits.append(numpy_helper.from_array(target, f"s{i}"))
            y = node("Softmax", [node("Reshape", [y, f"s{i}"])], axis=-1)
    elif name in ("gemm_fp32_a", "gemm_int8_a"):
        shape, y = gemm_chain(*GEMM_A)
    elif name in ("gemm_fp32_b", "gemm_int8_b"):
        shape, y = gemm_chain(*GEMM_B)
    elif name == "gemv_dram":
        shape, y = gemm_chain(*GEMV)
    elif name in ("gemm_fp32_mix", "gemm_int8_mix"):
        shape, y = gemm_chain(*(MIX_FP32 if "fp32" in name else MIX_INT8))
    elif name == "add_cache":
        shape, y = CACHE, "x"
        for i in range(8):
            y = node("Add" if i % 2 else "Mul", [y, "x"])
        y = node("ReduceMax", [y], keepdims=0)
    elif name == "vec_transc":
        shape, y = VEC, "x"
        for i in range(6):  # weighted like transformer graphs: mostly GELU
            y = node("BiasGelu", [y, const(np.zeros(VEC[1]))], domain="com.microsoft") if i else node("Tanh", [y])
    elif name == "vec_softmax":
        shape, y = SOFTMAX, "x"
        for _ in range(6):
            y = node("Softmax", [y], axis=-1)
    elif name == "vec_norm":
        shape, y, h = VEC, "x", VEC[1]
        for i in range(6):  # weighted like transformer graphs: mostly the fused residual + layer norm
            if i:
                y = node("SkipLayerNormalization", [y, "x", const(np.ones(h)), const(np.zeros(h))], domain="com.microsoft", epsilon=1e-5)
            else:
                y = node("LayerNormalization", [y, const(np.ones(h)), const(np.zeros(h))], axis=-1, epsilon=1e-5)
    elif name == "transpose_cache":
        # regrouping Reshapes between the Transposes keep the optimiser from merging / cancelling them
        shape, y = TRANSPOSE, "x"
        for i in range(6):
            y = node("Transpose", [y], perm=[0, 2, 1])
            regroup = [64, 32, 128] if i % 2 == 0 else [64, 64, 64]
            y = node("Reshape", [y, inits.append(numpy_helper.from_array(np.array(regroup, np.int64), f"r{i}")) or f"r{i}"])
    elif name == "tiny_attention":
        shape, y = (1, 8, 16), "x"
        for _ in range(16):
            y = node("Attention", [y, const(rng.standard_normal((16, 48)) * 0.1), const(np.zeros(48))], domain="com.microsoft", num_heads=2)
    elif name == "bmm":
        shape, y = BMM, "x"
        for _ in range(3):
            s = node("MatMul", [y, node("Transpose", [y], perm=[0, 2, 1])])
            y = node("MatMul", [s, "x"])
    else:
        raise ValueError(name)
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = workdir / f"{name}.onnx"
    onnx.save_model(model, str(path))
    if "int8" in name:  # the converter's settings: dynamic, per-channel symmetric int8 weights
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = workdir / f"{name}.fp32.onnx"
        path.rename(fp32)
        quantize_dynamic(
            str(fp32), str(path), per_channel=True, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT}
        )
    feed = {"x": rng.standard_normal(shape).astype(np.float32) * 0.1}
    return path, feed


def _torch_micro(name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Chain(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:], strict=False))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class Fn(nn.Module):
        def __init__(self, fn, params=None):
            super().__init__()
            self.fn = fn
            self.p = nn.ParameterList([nn.Parameter(p, requires_grad=False) for p in (params or [])])

        def forward(self, x):
            return self.fn(x, *self.p)

    if name == "call":
        return Fn(lambda x, c: x + c, [torch.ones(*SMALL)]), SMALL
    if name == "tiny_chain":

        def tiny(x, c):
            for _ in range(48):
                x = x * c
            return x

        return Fn(tiny, [torch.full(SMALL, 1.01)]), SMALL
    if name == "reshape_chain":

        def reshapes(x, c):  # a softmax between reshapes keeps the converter from folding them away
            for i in range(24):
                x = torch.softmax(x.reshape(*SMALL[::-1]) if i % 2 == 0 else x.reshape(*SMALL), dim=-1)
            return x * c

        return Fn(reshapes, [torch.full(SMALL, 1.01)]), SMALL
    if name.startswith("gemm") and not name.endswith("_mix"):
        m, dims = GEMM_A if name.endswith("_a") else GEMM_B
        return Chain(dims), (m, dims[0])
    if name == "gemv_dram":
        m, dims = GEMV
        return Chain(dims), (m, dims[0])
    if name in ("gemm_fp32_mix", "gemm_int8_mix"):
        m, dims = MIX_FP32 if "fp32" in name else MIX_INT8
        return Chain(dims), (m, dims[0])
    if name == "add_cache":

        def adds(x):
            y = x
            for i in range(8):
                y = y + x if i % 2 else y * x
            return y.amax()

        return Fn(adds), CACHE
    if name == "vec_transc":

        def transc(x):
            y = x
            for i in range(6):
                y = torch.nn.functional.gelu(y) if i else torch.tanh(y)
            return y

        return Fn(transc), VEC
    if name == "vec_softmax":

        def softmax(x):
            for _ in range(6):
                x = torch.softmax(x, dim=-1)
            return x

        return Fn(softmax), SOFTMAX
    if name == "vec_norm":
        h = VEC[1]

        def norm(x, w, b):
            y = x
            for i in range(6):
                y = torch.nn.functional.layer_norm(y + x if i else y, (h,), w, b)
            return y

        return Fn(norm, [torch.ones(h), torch.zeros(h)]), VEC
    if name == "transpose_cache":

        def transposes(x):
            for i in range(6):
                x = x.transpose(1, 2).reshape(64, 32, 128) if i % 2 == 0 else x.transpose(1, 2).reshape(64, 64, 64)
            return x

        return Fn(transposes), TRANSPOSE
    if name == "tiny_attention":

        def tiny_attention(x):
            y = x
            for _ in range(8):
                y = torch.bmm(torch.softmax(torch.bmm(y, y.transpose(1, 2)), dim=-1), y)
            return y

        return Fn(tiny_attention), (2, 8, 8)
    if name == "bmm":

        def bmm(x):
            y = x
            for _ in range(3):
                y = torch.bmm(torch.bmm(y, y.transpose(1, 2)), x)
            return y

        return Fn(bmm), BMM
    raise ValueError(name)


def _tflite_micro(name: str, workdir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    import torch

    from converters.tflite import _quiet_litert, quantize_tflite

    module, shape = _torch_micro(name)
    sample = torch.randn(*shape) * 0.1
    with _quiet_litert():
        import litert_torch

        data = bytes(litert_torch.convert(module.eval(), sample_args=(sample,)).model_content())
    if "int8" in name:
        data = quantize_tflite(data, "int8")
    path = workdir / f"{name}.tflite"
    path.write_bytes(data)
    return path, {"x": sample.numpy()}


MICROS = (
    "call",
    "tiny_chain",
    "reshape_chain",
    "tiny_attention",
    "gemv_dram",
    "transpose_cache",
    "add_cache",
    "vec_transc",
    "vec_softmax",
    "vec_norm",
    "gemm_fp32_a",
    "gemm_fp32_b",
    "gemm_int8_a",
    "gemm_int8_b",
    "gemm_fp32_mix",
    "gemm_int8_mix",
    "bmm",
)


def _litert_runner(path: Path, feed: dict[str, np.ndarray], threads: int):
    """The micro model in `converters.tflite.LiteRTRuntime` (same interpreter settings as artifacts)."""
    from ai_edge_litert.interpreter import Interpreter

    from converters.base import Artifact, TensorSpec, get_converter

    names = list(Interpreter(model_path=str(path)).get_signature_runner().get_input_details())
    specs = [TensorSpec(n, "float32", tuple(v.shape)) for n, v in zip(names, feed.values(), strict=True)]
    rt = get_converter("tflite").runtime(Artifact("tflite", "fp32", path, specs, []), threads)
    inputs = dict(zip(names, feed.values(), strict=True))
    return lambda: rt.run(inputs)


#: Timing passes over all micro-benchmarks; each micro's figure is its lowest pass median (rejects
#: interference from other processes on a shared host without timing only the luckiest single run).
PASSES = 3


def _repeats(fn, budget_s: float = 0.12) -> int:
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return int(min(200, max(7, budget_s / once)))


def thread_cpu_median_s(fn, repeats: int, warmup: int = 2) -> float:
    """Median CPU time of the calling thread per call of `fn`.

    With one runtime thread, onnxruntime and LiteRT/XNNPACK compute on the calling thread, so this
    is the latency without the time other processes hold the core (time slicing on a shared host).
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        samples.append(time.thread_time() - start)
    return float(np.median(samples))


def _timer(threads: int):
    """CPU time of the calling thread at 1 thread (robust to other jobs); wall-clock median otherwise."""
    from edgekit.verify.latency import time_runs

    if threads == 1:
        return thread_cpu_median_s
    return lambda fn, repeats: time_runs(fn, warmup=2, repeats=repeats)["median_ms"] / 1e3


def _measure(runtime: str, threads: int, workdir: Path) -> list[dict[str, Any]]:
    from edgekit.verify.estimate import onnx_op_costs, tflite_op_costs

    fmt = "onnx" if runtime == "onnxruntime" else "tflite"
    rows = []
    for name in MICROS:
        if fmt == "onnx":
            path, feed = _onnx_micro(name, workdir)
            costs = onnx_op_costs(path, seq_len=1)
            fn = _ort_runner(path, feed, threads)
        else:
            path, feed = _tflite_micro(name, workdir)
            costs, _ = tflite_op_costs(path)
            fn = _litert_runner(path, feed, threads)
        rows.append({"name": name, "fn": fn, "repeats": _repeats(fn), "costs": costs, "passes": []})
    timer = _timer(threads)
    for _ in range(PASSES):
        for r in rows:
            r["passes"].append(timer(r["fn"], r["repeats"]))
    for r in rows:
        r["measured_s"] = min(r["passes"])
        del r["fn"]
    return rows


def _ort_runner(path: Path, feed: dict[str, np.ndarray], threads: int):
    """The micro model in `converters.onnx.ORTRuntime` (same session options as artifacts)."""
    import onnx

    from converters.base import Artifact, TensorSpec
    from converters.onnx import ORTRuntime

    model = onnx.load(str(path), load_external_data=False)
    outs = [TensorSpec(o.name, "float32", ()) for o in model.graph.output]
    ins = [TensorSpec(n, "float32", tuple(v.shape)) for n, v in feed.items()]
    rt = ORTRuntime(Artifact("onnx", "fp32", path, ins, outs), threads)
    return lambda: rt.run(feed)


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------


def _initial(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Direct per-parameter estimates from the micro-benchmark designed for each (the fit's starting point)."""
    by = {r["name"]: r for r in rows}

    def amount(name, kinds, what="flops"):
        return sum(getattr(p, what) for op in by[name]["costs"] for p in op.parts if p.kind in kinds) or 1.0

    def t(name):
        return by[name]["measured_s"]

    n_ops = {name: sum(not op.free for op in by[name]["costs"]) for name in by}
    t_call_op = t("call")
    t_op = max((t("tiny_chain") - t_call_op) / max(n_ops["tiny_chain"] - 1, 1), 1e-7)
    n_free = sum(op.free for op in by["reshape_chain"]["costs"])
    t_free = max((t("reshape_chain") - t_call_op - (n_ops["reshape_chain"] - 1) * t_op) / max(n_free, 1), 1e-8)
    n_attn = sum(any(p.kind == "bmm" for p in op.parts) for op in by["tiny_attention"]["costs"])
    t_attn = max((t("tiny_attention") - t_call_op - (n_ops["tiny_attention"] - 1) * t_op) / max(n_attn, 1), 1e-8)
    return {
        "gemm_fp32": amount("gemm_fp32_b", ("gemm",)) / t("gemm_fp32_b"),
        "gemm_int8": amount("gemm_int8_b", ("gemm",)) / t("gemm_int8_b"),
        "bmm_fp32": amount("bmm", ("bmm",)) / t("bmm"),
        "ew": amount("add_cache", ("ew",)) / t("add_cache"),
        "transc": amount("vec_transc", ("transc",)) / t("vec_transc"),
        "softmax": amount("vec_softmax", ("softmax",)) / t("vec_softmax"),
        # LiteRT decomposes layer norms into element-wise ops: no "norm" op to fit, keep the GELU figure
        "norm": amount("vec_norm", ("norm",)) / t("vec_norm")
        if amount("vec_norm", ("norm",)) > 1
        else amount("vec_transc", ("transc",)) / t("vec_transc"),
        "bw_dram": amount("gemv_dram", ("gemm",), "weight_bytes") / t("gemv_dram"),
        "bw_cache": amount("add_cache", ("ew",), "act_bytes") / t("add_cache"),
        "bw_move": amount("transpose_cache", ("memory",), "act_bytes") / t("transpose_cache"),
        "overlap_p": 2.0,
        "t_op": t_op,
        "t_free": t_free,
        "t_attn": t_attn,
        "t_call": max(t_call_op - t_op, 1e-6),
    }


def exercised(rows: list[dict[str, Any]]) -> set[str]:
    """Parameters the micro-benchmarks can constrain (a rate no op uses stays at its starting value)."""
    used = {"t_op", "t_call", "overlap_p", "bw_dram", "bw_cache"}
    for r in rows:
        for op in r["costs"]:
            if op.free:
                used.add("t_free")
            for p in op.parts:
                if p.kind == "memory":
                    used.add("bw_move")
                elif p.kind in ("gemm", "bmm") and p.precision == "int8":
                    used.add("gemm_int8")
                elif p.kind == "gemm":
                    used.add("gemm_fp32")
                elif p.kind == "bmm":
                    used |= {"bmm_fp32", "t_attn"}
                else:
                    used.add(p.kind)
    return used


def fit(rows: list[dict[str, Any]], cache_bytes: float = 0.0, vector_cap: float | None = None) -> tuple[dict[str, float], float, list[str]]:
    """Least squares on log(predicted / measured) over the micro-benchmarks.

    Returns the parameters, the rms log error and the parameters left unconstrained (not exercised
    by any micro-benchmark, or pinned at a bound of the search: their value is a limit, not a fit).
    """
    from scipy.optimize import least_squares

    x0 = _initial(rows)
    names = list(PARAM_NAMES)
    free = [n for n in names if n in exercised(rows)]
    fixed = {n: x0[n] for n in names if n not in free}

    def params(z):
        return {**fixed, **dict(zip(free, np.exp(z), strict=True))}

    def resid(z):
        m = Machine.from_params(params(z), cache_bytes)
        return np.array([np.log(predict_s(r["costs"], m) / r["measured_s"]) for r in rows])

    z0 = np.log([max(x0[n], 1e-12) for n in free])
    lo, hi = z0 - np.log(100), z0 + np.log(100)
    for k, name in enumerate(free):
        if name == "overlap_p":  # 1 (compute and memory add up) .. 8 (almost the pure roofline max)
            lo[k], hi[k] = 0.0, np.log(8.0)
        elif vector_cap and name in ("ew", "transc", "softmax", "norm"):  # at most twice the host's SIMD peak
            hi[k] = min(hi[k], np.log(vector_cap))
            lo[k] = min(lo[k], hi[k] - np.log(1e4))
        z0[k] = min(max(z0[k], lo[k]), hi[k])
    sol = least_squares(resid, z0, bounds=(lo, hi), x_scale=1.0)
    res = resid(sol.x)
    at_bound = [n for k, n in enumerate(free) if n != "overlap_p" and min(sol.x[k] - lo[k], hi[k] - sol.x[k]) < 1e-3]
    return params(sol.x), float(np.sqrt(np.mean(res**2))), sorted(set(fixed) | set(at_bound))


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_path() -> Path:
    root = os.environ.get("EDGEKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit"
    )
    return Path(root) / "host-calibration.json"


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import ai_edge_litert

    return str(getattr(ai_edge_litert, "__version__", "unknown"))


def calibration_key(runtime: str, threads: int) -> str:
    cpu = host_cpu()
    return f"v{SCHEMA}|{cpu['cpu']}|{cpu['isa']}|{runtime} {runtime_version(runtime)}|threads={threads}"


def _load_cache() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def host_calibration(runtime: str, threads: int, *, force: bool = False) -> dict[str, Any]:
    """Fitted host parameters for `runtime` ("onnxruntime" | "litert") at `threads`, measured once and cached."""
    key = calibration_key(runtime, threads)
    force = force or os.environ.get("EDGEKIT_RECALIBRATE", "") not in ("", "0")
    cache = _load_cache()
    if not force and key in cache and cache[key].get("schema") == SCHEMA:
        return cache[key]
    entry = measure_calibration(runtime, threads)
    cache = {k: v for k, v in _load_cache().items() if isinstance(v, dict) and v.get("schema") == SCHEMA}  # drop stale schemas
    cache[key] = entry
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return entry


def measure_calibration(runtime: str, threads: int) -> dict[str, Any]:
    """Run the micro-benchmarks now and fit (no cache)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-cal-") as tmp:
        rows = _measure(runtime, threads, Path(tmp))
    cpu = host_cpu()
    cache = LLC_OCCUPANCY * cpu["llc_bytes"]
    params, rms, unconstrained = fit(rows, cache, vector_cap=2.0 * threads * cpu["fp32_flops_per_cycle"] * cpu["reported_ghz"] * 1e9)
    ghz, src = cpu["reported_ghz"], cpu["ghz_source"]
    eff = params["gemm_fp32"] / (threads * cpu["fp32_flops_per_cycle"] * ghz * 1e9)
    if eff > GEMM_EFFICIENCY_CEILING:
        inferred = params["gemm_fp32"] / (GEMM_EFFICIENCY_CEILING * threads * cpu["fp32_flops_per_cycle"] * 1e9)
        src = (
            f"inferred {inferred:.2f} GHz: the fitted fp32 GEMM rate would be {eff:.0%} of the nominal peak at the reported "
            f"{ghz:.2f} GHz ({src}), so the core runs faster (turbo); clock set so GEMM efficiency = {GEMM_EFFICIENCY_CEILING:.0%}"
        )
        ghz = inferred
    m = Machine.from_params(params, cache)
    return {
        "schema": SCHEMA,
        "key": calibration_key(runtime, threads),
        "runtime": runtime,
        "runtime_version": runtime_version(runtime),
        "threads": threads,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "host": {**cpu, "ghz": ghz, "ghz_source": src},
        "params": params,
        "fit_rms_log_error": rms,
        "unconstrained": unconstrained,
        "micro": [{"name": r["name"], "measured_ms": r["measured_s"] * 1e3, "predicted_ms": predict_s(r["costs"], m) * 1e3} for r in rows],
    }


def describe(cal: dict[str, Any]) -> str:
    p = cal["params"]
    rates = ("gemm_fp32", "gemm_int8", "bmm_fp32", "ew", "transc", "softmax", "norm", "bw_dram", "bw_cache", "bw_move")
    loose = set(cal.get("unconstrained", []))  # marked with a *: not determined by the micro-benchmarks
    g = {k: f"{p[k] / 1e9:.1f}{'*' if k in loose else ''}" for k in rates}
    us = {k: f"{p[k] * 1e6:.2f}{'*' if k in loose else ''}" for k in ("t_op", "t_free", "t_attn", "t_call")}
    return (
        f"{cal['runtime']} {cal['runtime_version']} x{cal['threads']} thread(s): GEMM fp32 {g['gemm_fp32']} GFLOP/s, "
        f"int8 {g['gemm_int8']} GOP/s, batched MatMul {g['bmm_fp32']} GFLOP/s; vector (nominal Gop/s) element-wise "
        f"{g['ew']}, GELU/tanh {g['transc']}, softmax {g['softmax']}, layer norm {g['norm']}; "
        f"DRAM {g['bw_dram']} GB/s, cache {g['bw_cache']} GB/s, data movement {g['bw_move']} GB/s, "
        f"compute/memory overlap p={p['overlap_p']:.2f}; overheads: op {us['t_op']} us, reshape {us['t_free']} us, "
        f"attention +{us['t_attn']} us, call {us['t_call']} us; host clock {cal['host']['ghz']:.2f} GHz; fit rms log error "
        f"{cal['fit_rms_log_error']:.3f}; measured in {cal['seconds']} s"
        + ("; * = not constrained by the micro-benchmarks" if loose else "")
    )
