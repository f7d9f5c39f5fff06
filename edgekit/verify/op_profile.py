"""Per-op / per-layer time breakdown of an artifact in its real runtime, and its peak memory.

What each format gets, and how (every number says how it was obtained):

- **ONNX** (`measured-host`): onnxruntime's own profiler (`SessionOptions.enable_profiling`) on a
  session configured exactly like `converters.onnx.ORTRuntime` (CPU EP, `ORT_ENABLE_ALL`, the
  given intra-op threads). Its JSON trace has one `model_run` event per run and one
  `<node>_kernel_time` event per executed node; warm-up runs are dropped by timestamp and the
  kernel times of the measured runs averaged. Per-layer totals come from the node names and
  output-tensor names of the graph onnxruntime actually executes (saved with
  `optimized_model_filepath`): the exporter's module paths (`/encoder/layer.3/...`) survive
  fusion in the fused nodes' output names (`Attention_3` writes `.../layer.3/attention/...`).
- **TFLite**: the LiteRT Python interpreter (`ai_edge_litert` 2.x) exposes no op profiler: its
  pybind wrapper has no profiler hook (`InterpreterWrapper` offers Invoke/tensors only, and the
  `CompiledModel` wrapper hides the C API's `LiteRtCompiledModelGetProfiler`). Timing truncated
  sub-models would not measure the fused kernels the app runs, so it is not done. Instead the
  breakdown comes from LiteRT's `benchmark_model --enable_op_profiling=true`: on the phone via
  `edgekit.verify.adb` (`measured-device`), or here when a host build of `benchmark_model` is
  given (`benchmark_model=`) or found (`EDGEKIT_BENCHMARK_MODEL` / PATH, a Linux ELF for this
  machine). Without one, `OpProfileUnavailable` says so in one line.
- **Core ML**: no per-op timing API outside Xcode's Core ML performance report on Apple hardware.

`measure_memory` loads and runs the artifact in a fresh Python process, so the numbers are not
mixed with this process's allocations: the RSS just before loading, the peak RSS while loading
and running (Linux: `VmHWM` after resetting it through `/proc/self/clear_refs`; elsewhere
`ru_maxrss`), and their difference.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import MEASURED_HOST, Artifact, TensorSpec, cast_inputs
from edgekit.errors import UserError

#: Groups that hold the nodes before the first and after the last transformer layer, and every
#: node when no node names a layer (e.g. XNNPACK-delegated ops in a benchmark_model op profile).
EMBEDDINGS = "embeddings"
HEAD = "head"
UNATTRIBUTED = "unattributed"
_GROUP_ORDER = {EMBEDDINGS: 0, HEAD: 2, UNATTRIBUTED: 3}

# Module paths of transformer layers as exporters write them:
#   torch.onnx:    /model/encoder/encoder/layer.3/attention/...   (BERT, DistilBERT: transformer/layer.3)
#                  .../layers.3/..., .../h.3/..., .../block.3/...  (other families)
#   litert-torch:  ...modeling_bert.BertLayer_3/...                 (class name + index)
#                  ...modeling_distilbert.TransformerBlock_3/...
_LAYER_PATTERNS = (
    re.compile(r"(?:^|[/._;\[])(?:layer|layers|block|blocks|h)[._](\d+)(?=[/._;:\]]|$)"),
    re.compile(r"[A-Za-z](?:Layer|Block)_(\d+)(?=[/;:\]]|$)"),
)
#: Op types that open a transformer layer (an unnamed one between layers i and i+1 belongs to i+1).
_LAYER_OPENERS = {"attention", "qattention", "multiheadattention", "packedattention", "softmax"}


class OpProfileUnavailable(UserError):
    """No per-op breakdown (or memory measurement) is possible for this artifact here; the message says why."""


@dataclass
class OpTime:
    """Time of one op type, summed over its nodes, per run."""

    op_type: str
    ms: float
    share: float
    nodes: int


@dataclass
class LayerTime:
    """Time of one transformer layer (or the embeddings / head around the layers), per run."""

    name: str
    index: int | None
    ms: float
    share: float
    nodes: int


@dataclass
class NodeTime:
    """Time of one graph node, per run (summed over its calls when it runs more than once)."""

    name: str
    op_type: str
    ms: float
    share: float
    layer: str


@dataclass
class OpProfile:
    """Per-op, per-node and per-layer time of one artifact, averaged over `runs` runs after `warmup`.

    `op_total_ms` is the mean per-run sum of the op times (the shares are relative to it);
    `total_ms` is the mean time of a whole run as the runtime or tool timed it (it also holds
    the runtime's own overhead between ops), or None when the tool did not report it.
    """

    artifact: str
    format: str
    runtime: str
    runtime_version: str
    threads: int
    runs: int
    warmup: int
    provenance: str
    total_ms: float | None
    op_total_ms: float
    by_type: list[OpTime]
    by_layer: list[LayerTime]
    nodes: list[NodeTime]
    notes: list[str] = field(default_factory=list)

    def top_nodes(self, k: int = 10) -> list[NodeTime]:
        return sorted(self.nodes, key=lambda n: n.ms, reverse=True)[:k]

    @property
    def layers_found(self) -> int:
        return sum(1 for layer in self.by_layer if layer.index is not None)

    def to_json(self, top: int = 20) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = [asdict(n) for n in self.top_nodes(top)]
        data["nodes_total"] = len(self.nodes)
        return data


# ---------------------------------------------------------------------------------------------
# Building a profile from per-node times (shared by the ONNX and benchmark_model paths)
# ---------------------------------------------------------------------------------------------


def layer_index(*names: str) -> int | None:
    """Transformer layer index named in the first of `names` that names one (the largest if several)."""
    for name in names:
        if not name:
            continue
        found = [int(m) for pattern in _LAYER_PATTERNS for m in pattern.findall(name)]
        if found:
            return max(found)
    return None


def assign_layers(nodes: list[tuple[str, str, list[str]]]) -> list[str]:
    """Layer group of each node, given `(name, op_type, hint names)` in execution order.

    A node belongs to the layer its name (or else one of its hints, e.g. output tensor names)
    names. A node that names none is placed by position: before the first layer node ->
    `embeddings`, after the last -> `head`, between nodes of layers i and j -> layer i (the
    tail of a layer: residual add, LayerNorm, quantize), except ops that open a layer
    (attention, softmax), which go to layer j.
    """
    explicit = [layer_index(name, *hints) for name, _, hints in nodes]
    known = [i for i, idx in enumerate(explicit) if idx is not None]
    if not known:
        return [UNATTRIBUTED] * len(nodes)
    groups: list[str] = []
    for i, (_, op_type, _) in enumerate(nodes):
        idx = explicit[i]
        if idx is None:
            pos = bisect.bisect_left(known, i)  # known[pos - 1] < i < known[pos]
            prev = explicit[known[pos - 1]] if pos > 0 else None
            nxt = explicit[known[pos]] if pos < len(known) else None
            opener = op_type.lower() in _LAYER_OPENERS
            if prev is None:
                idx = nxt if (opener and nxt is not None) else None
                if idx is None:
                    groups.append(EMBEDDINGS)
                    continue
            elif nxt is None:
                groups.append(HEAD)
                continue
            else:
                idx = nxt if (opener and nxt != prev) else prev
        groups.append(f"layer.{idx}")
    return groups


def build_profile(
    node_ms: list[tuple[str, str, float]],
    *,
    hints: dict[str, list[str]] | None = None,
    artifact: Artifact | None = None,
    artifact_name: str = "",
    fmt: str = "",
    runtime: str,
    runtime_version: str,
    threads: int,
    runs: int,
    warmup: int,
    provenance: str,
    total_ms: float | None,
    notes: list[str] | None = None,
) -> OpProfile:
    """An `OpProfile` from `(node name, op type, ms per run)` in execution order."""
    hints = hints or {}
    op_total = float(sum(ms for _, _, ms in node_ms))
    groups = assign_layers([(name, op, hints.get(name, [])) for name, op, _ in node_ms])

    def share(ms: float) -> float:
        return ms / op_total if op_total > 0 else 0.0

    nodes = [NodeTime(name, op, ms, share(ms), group) for (name, op, ms), group in zip(node_ms, groups, strict=True)]
    type_ms: dict[str, float] = defaultdict(float)
    type_n: dict[str, int] = defaultdict(int)
    for node in nodes:
        type_ms[node.op_type] += node.ms
        type_n[node.op_type] += 1
    by_type = sorted((OpTime(t, ms, share(ms), type_n[t]) for t, ms in type_ms.items()), key=lambda o: o.ms, reverse=True)

    layer_ms: dict[str, float] = defaultdict(float)
    layer_n: dict[str, int] = defaultdict(int)
    for node in nodes:
        layer_ms[node.layer] += node.ms
        layer_n[node.layer] += 1

    def index(name: str) -> int | None:
        return None if name in _GROUP_ORDER else int(name.split(".", 1)[1])

    def order(name: str) -> tuple[int, int]:
        return (_GROUP_ORDER[name], 0) if name in _GROUP_ORDER else (1, int(name.split(".", 1)[1]))

    by_layer = [LayerTime(name, index(name), layer_ms[name], share(layer_ms[name]), layer_n[name]) for name in sorted(layer_ms, key=order)]
    notes = list(notes or [])
    if nodes and not any(layer.index is not None for layer in by_layer):
        notes.append(f"no node names a transformer layer: per-layer times unavailable (all nodes grouped as '{UNATTRIBUTED}')")
    return OpProfile(
        artifact=artifact.name if artifact is not None else artifact_name,
        format=artifact.format if artifact is not None else fmt,
        runtime=runtime,
        runtime_version=runtime_version,
        threads=threads,
        runs=runs,
        warmup=warmup,
        provenance=provenance,
        total_ms=total_ms,
        op_total_ms=op_total,
        by_type=by_type,
        by_layer=by_layer,
        nodes=nodes,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def synthetic_inputs(specs: list[TensorSpec], seq_len: int = 128, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Batch-1 inputs shaped like the artifact's: token ids in [1000, 2000), an all-ones mask, zero token types.

    Dynamic dimensions (-1) become `[1, seq_len]`; a full attention mask is the worst case for a
    static-shape model and what a padded-to-length app input costs anyway.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = tuple(d if d > 0 else (1 if i == 0 else seq_len) for i, d in enumerate(spec.shape)) or (1, seq_len)
        if "mask" in spec.name:
            value = np.ones(shape)
        elif "token_type" in spec.name or "segment" in spec.name:
            value = np.zeros(shape)
        else:
            value = rng.integers(1000, 2000, size=shape)
        out[spec.name] = value.astype(spec.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# ONNX: onnxruntime's profiler
# ---------------------------------------------------------------------------------------------


def parse_ort_trace(events: list[dict[str, Any]], warmup: int) -> tuple[list[tuple[str, str, float]], list[float], set[str]]:
    """Per-node mean ms per run (execution order), per-run ms, and the providers seen, from an ORT trace.

    The first `warmup` `model_run` events are dropped, and with them every node event that
    falls inside their time span.
    """
    run_events = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    measured = run_events[warmup:]
    if not measured:
        raise ValueError(f"trace holds {len(run_events)} runs, none after {warmup} warm-up runs")
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in measured]
    node_events = sorted(
        (e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")), key=lambda e: e["ts"]
    )
    totals: dict[tuple[str, str], float] = defaultdict(float)
    order: list[tuple[str, str]] = []
    providers: set[str] = set()
    span = 0
    for event in node_events:
        while span < len(spans) and event["ts"] > spans[span][1]:
            span += 1
        if span >= len(spans):
            break
        if event["ts"] < spans[span][0]:
            continue  # a warm-up run's node
        args = event.get("args", {})
        op_type = str(args.get("op_name", "?"))
        name = event["name"][: -len("_kernel_time")] or f"{op_type}#{args.get('node_index', '?')}"
        key = (name, op_type)
        if key not in totals:
            order.append(key)
        totals[key] += float(event["dur"])
        providers.add(str(args.get("provider", "")))
    n = len(measured)
    node_ms = [(name, op, totals[(name, op)] / n / 1e3) for name, op in order]
    return node_ms, [e["dur"] / 1e3 for e in measured], providers - {""}


def _output_hints(optimized_model: Path) -> dict[str, list[str]]:
    import onnx

    model = onnx.load(str(optimized_model), load_external_data=False)
    return {node.name: list(node.output) for node in model.graph.node if node.name}


def _profile_onnx(artifact: Artifact, threads: int, runs: int, warmup: int, inputs: dict[str, np.ndarray]) -> OpProfile:
    import onnxruntime as ort

    feeds = cast_inputs(inputs, artifact.inputs)
    output_names = [o.name for o in artifact.outputs]
    notes = []
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-profile-") as tmp:

        def session(save_optimized: bool):
            # Same configuration as converters.onnx.ORTRuntime, plus the profiler.
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "ort-profile")
            if save_optimized:
                opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            return ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])

        try:
            sess = session(save_optimized=True)
            hints = _output_hints(Path(tmp) / "optimized.onnx")
        except Exception as exc:  # some graphs cannot be serialised after optimisation: profile without hints
            sess = session(save_optimized=False)
            hints = {}
            notes.append(f"optimised graph not saved ({exc.__class__.__name__}): layers assigned from node names only")
        for _ in range(warmup + runs):
            sess.run(output_names, feeds)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
    node_ms, run_ms, providers = parse_ort_trace(events, warmup)
    if providers - {"CPUExecutionProvider"}:
        notes.append(f"execution providers: {', '.join(sorted(providers))}")
    notes.append("onnxruntime profiler: per-node kernel times; total_ms is the model_run time (adds the executor's overhead)")
    return build_profile(
        node_ms,
        hints=hints,
        artifact=artifact,
        runtime="onnxruntime",
        runtime_version=ort.__version__,
        threads=threads,
        runs=runs,
        warmup=warmup,
        provenance=MEASURED_HOST,
        total_ms=float(np.mean(run_ms)),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# TFLite: benchmark_model --enable_op_profiling on this host, when there is a host build
# ---------------------------------------------------------------------------------------------

TFLITE_UNAVAILABLE = (
    "per-op breakdown is not available for TFLite on this host via Python (the LiteRT interpreter exposes no op "
    "profiler); run benchmark_model --enable_op_profiling=true on the device (edgekit adb runner), or set "
    "EDGEKIT_BENCHMARK_MODEL to a benchmark_model built for this machine"
)


def _profile_tflite_host(
    artifact: Artifact, threads: int, runs: int, warmup: int, benchmark_model: str | os.PathLike[str] | None, xnnpack: bool
) -> OpProfile:
    from edgekit.verify import adb

    binary = adb.find_host_benchmark_model(benchmark_model)
    if binary is None:
        raise OpProfileUnavailable(TFLITE_UNAVAILABLE)
    cmd = [
        str(binary),
        f"--graph={artifact.path}",
        *adb.benchmark_flags(threads, "cpu" if xnnpack else "cpu-builtin", warmup, runs, op_profiling=True, peak_memory=False),
        *adb.input_flags(artifact),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OpProfileUnavailable(
            f"host benchmark_model {binary} could not run ({exc.__class__.__name__}: {exc}); {TFLITE_UNAVAILABLE}"
        ) from exc
    parsed = adb.parse_benchmark_output(proc.stdout + "\n" + proc.stderr)
    if parsed.error or parsed.op_profile is None:
        reason = parsed.error or "its output has no op profile (a build without profiling?)"
        raise OpProfileUnavailable(f"host benchmark_model {binary} failed: {reason}")
    return parsed.op_profile.to_profile(
        artifact=artifact,
        runtime="litert benchmark_model" + (" (XNNPACK)" if xnnpack else " (builtin kernels)"),
        runtime_version="unknown",
        threads=threads,
        runs=runs,
        warmup=warmup,
        provenance=MEASURED_HOST,
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def profile_ops(
    artifact: Artifact,
    threads: int,
    runs: int = 20,
    *,
    warmup: int = 5,
    inputs: dict[str, np.ndarray] | None = None,
    seq_len: int = 128,
    benchmark_model: str | os.PathLike[str] | None = None,
    xnnpack: bool = True,
) -> OpProfile:
    """Per-op-type, per-node and per-layer time of `artifact` in its real runtime on this host.

    `inputs` default to `synthetic_inputs(artifact.inputs, seq_len)`. For TFLite the host needs
    a `benchmark_model` build (see the module docstring); `xnnpack=False` profiles the builtin
    kernels instead of XNNPACK (slower, but every node keeps its tensor names and so its layer).
    Raises `OpProfileUnavailable` (a `UserError`) when the format cannot be profiled here.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise UserError(f"profiling needs threads >= 1, runs >= 1 and warmup >= 0 (got {threads}, {runs}, {warmup})")
    if artifact.format == "onnx":
        return _profile_onnx(artifact, threads, runs, warmup, inputs or synthetic_inputs(artifact.inputs, seq_len))
    if artifact.format == "tflite":
        return _profile_tflite_host(artifact, threads, runs, warmup, benchmark_model, xnnpack)
    if artifact.format == "coreml":
        raise OpProfileUnavailable(
            "per-op breakdown is not available for Core ML here: Core ML reports op costs only in Xcode's "
            "performance report on Apple hardware; open the .mlpackage in Xcode (Performance tab) on a Mac"
        )
    raise OpProfileUnavailable(f"per-op breakdown is not available for format '{artifact.format}'")


@dataclass
class MemoryProfile:
    """Resident memory of loading and running one artifact in a fresh process, in MB (1 MB = 2**20 bytes)."""

    artifact: str
    runtime: str
    threads: int
    runs: int
    baseline_mb: float
    after_load_mb: float
    peak_mb: float
    peak_delta_mb: float
    method: str
    provenance: str = MEASURED_HOST

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_MEMORY_CHILD = r"""
import json, os, resource, sys
spec = json.loads(sys.argv[1])

def rss_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None

def hwm_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0

import numpy as np
import edgekit  # noqa: F401  (quiet environment)
from converters.base import Artifact, TensorSpec, get_converter

if spec["format"] == "onnx":
    import onnxruntime  # noqa: F401
elif spec["format"] == "tflite":
    import ai_edge_litert.interpreter  # noqa: F401
inputs = {k: np.asarray(v, dtype=spec["dtypes"][k]) for k, v in spec["inputs"].items()}
art = Artifact(format=spec["format"], precision=spec["precision"], path=__import__("pathlib").Path(spec["path"]),
               inputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in spec["specs_in"]],
               outputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in spec["specs_out"]])
converter = get_converter(spec["format"])  # imports every converter module: before the baseline
method = "VmHWM after clear_refs"
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    method = "ru_maxrss (includes import peak)"
base = rss_mb()
if base is None:
    base = hwm_mb()
    method = "ru_maxrss (includes import peak)"
runtime = converter.runtime(art, spec["threads"])
loaded = rss_mb() or hwm_mb()
for _ in range(spec["runs"]):
    runtime.run(inputs)
print(json.dumps({"baseline_mb": base, "after_load_mb": loaded, "peak_mb": hwm_mb(), "method": method,
                  "runtime": f"{runtime.name} {runtime.version}"}))
"""


def measure_memory(
    artifact: Artifact,
    threads: int,
    *,
    runs: int = 3,
    inputs: dict[str, np.ndarray] | None = None,
    seq_len: int = 128,
    timeout_s: float = 600,
) -> MemoryProfile:
    """Load and run `artifact` `runs` times in a fresh Python process and report its resident memory."""
    if artifact.format not in ("onnx", "tflite"):
        raise OpProfileUnavailable(f"memory of {artifact.format} artifacts cannot be measured on this host (no runtime here)")
    inputs = inputs or synthetic_inputs(artifact.inputs, seq_len)
    spec = {
        "format": artifact.format,
        "precision": artifact.precision,
        "path": str(Path(artifact.path).resolve()),
        "threads": threads,
        "runs": max(1, runs),
        "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
        "dtypes": {k: str(np.asarray(v).dtype) for k, v in inputs.items()},
        "specs_in": [t.to_json() for t in artifact.inputs],
        "specs_out": [t.to_json() for t in artifact.outputs],
    }
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=timeout_s, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OpProfileUnavailable(f"memory measurement of {artifact.name} failed in its subprocess: {tail[:200]}")
    data = json.loads(lines[-1])
    return MemoryProfile(
        artifact=artifact.name,
        runtime=data["runtime"],
        threads=threads,
        runs=spec["runs"],
        baseline_mb=data["baseline_mb"],
        after_load_mb=data["after_load_mb"],
        peak_mb=data["peak_mb"],
        peak_delta_mb=max(0.0, data["peak_mb"] - data["baseline_mb"]),
        method=data["method"],
    )


def peak_memory_mb(artifact: Artifact, threads: int, *, runs: int = 3, seq_len: int = 128) -> float:
    """Peak resident memory (MB) that loading and running `artifact` adds to a process (see `measure_memory`)."""
    return measure_memory(artifact, threads, runs=runs, seq_len=seq_len).peak_delta_mb
