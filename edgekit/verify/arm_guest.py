"""Guest-side runner for `edgekit verify --arch arm64`, executed by the *emulated* aarch64 Python.

It must not import edgekit (the guest has only numpy and the aarch64 runtimes): it loads one
artifact, runs every row of the input `.npz` at batch 1 (as the host runs them), writes the outputs
to an `.npz` and prints one JSON object describing which kernel path ran:

- TFLite: how many of the model's nodes the XNNPACK delegate took over (computed from the
  interpreter's node list: the delegate node's partition, walked back from its outputs to its
  inputs), and the nodes left to the builtin kernels;
- ONNX: onnxruntime's providers and version;
- both: the guest's machine and the CPU features the emulated `/proc/cpuinfo` shows (what the
  runtimes dispatch kernels on; QEMU < 8 leaked the host's x86 file here).

Usage: python arm_guest.py REQUEST.json  (keys: artifact, format, inputs, outputs, threads, site, xnnpack)
Never report emulated time as latency: `seconds` is there only to size timeouts.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter


def cpu_info() -> dict:
    """What the guest sees as its CPU: machine, the first `Features` line, and whether it looks like x86."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        pass
    features = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.lower().startswith("features")), [])
    implementer = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("CPU part")), None)
    x86 = any(marker in text for marker in ("GenuineIntel", "AuthenticAMD", "vendor_id", "x86"))
    return {"machine": platform.machine(), "features": features, "cpu_part": implementer, "cpuinfo_is_x86": x86}


def xnnpack_partition(ops: list[dict], n_original: int) -> tuple[int, dict[str, int]]:
    """Nodes taken by delegate nodes (appended after the `n_original` model nodes), and the rest by op name.

    A delegate node's partition is every original node reached walking back from its outputs until
    its inputs: exactly the nodes it replaced.
    """
    producer = {int(t): o["index"] for o in ops[:n_original] for t in o["outputs"]}
    members: set[int] = set()
    for node in ops[n_original:]:
        if node["op_name"] != "DELEGATE":
            continue
        stop = {int(t) for t in node["inputs"]}
        todo, seen = [int(t) for t in node["outputs"]], set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop:
                continue
            seen.add(t)
            p = producer.get(t)
            if p is None or p in members:
                continue
            members.add(p)
            todo.extend(int(x) for x in ops[p]["inputs"] if int(x) >= 0)
    rest = Counter(ops[i]["op_name"] for i in range(n_original) if i not in members)
    return len(members), dict(rest)


def run_tflite(req: dict, inputs: dict) -> tuple[list, dict]:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    mode = OpResolverType.AUTO if req.get("xnnpack", True) else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=req["artifact"], num_threads=int(req.get("threads", 1)), experimental_op_resolver_type=mode)
    n_original = interpreter._interpreter.NumNodes()  # default delegates are applied at allocate_tensors
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    delegated, builtin = xnnpack_partition(ops, n_original)
    signatures = interpreter.get_signature_list()
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details()
    rows = []
    n = len(next(iter(inputs.values())))
    for i in range(n):
        feeds = {name: inputs[name][i : i + 1].astype(d["dtype"]) for name, d in details.items()}
        out = runner(**feeds)
        rows.append({k: v.copy() for k, v in out.items()})
    info = {
        "runtime": "litert",
        "runtime_version": str(getattr(ai_edge_litert, "__version__", "unknown")),
        "nodes": n_original,
        "delegate_nodes": len(ops) - n_original,
        "xnnpack_delegated_nodes": delegated,
        "builtin_nodes": builtin,
        "xnnpack_requested": bool(req.get("xnnpack", True)),
    }
    return rows, info


def run_onnx(req: dict, inputs: dict) -> tuple[list, dict]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(req.get("threads", 1))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(req["artifact"], opts, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    rows = []
    n = len(next(iter(inputs.values())))
    for i in range(n):
        feeds = {k: inputs[k][i : i + 1].astype("int32" if "int32" in types[k] else "int64") for k in types}
        rows.append(dict(zip(names, session.run(names, feeds), strict=True)))
    info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "providers": session.get_providers()}
    return rows, info


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as fh:
        req = json.load(fh)
    if req.get("site"):
        sys.path.insert(0, req["site"])
    import numpy as np

    started = time.time()
    result: dict = {"ok": False, "cpu": cpu_info(), "python": platform.python_version(), "numpy": np.__version__}
    try:
        with np.load(req["inputs"]) as data:
            inputs = {k: data[k] for k in data.files}
        rows, info = (run_tflite if req["format"] == "tflite" else run_onnx)(req, inputs)
        outputs = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        np.savez(req["outputs"], **outputs)
        result.update(info, ok=True, outputs={k: [str(v.dtype), list(v.shape)] for k, v in outputs.items()})
    except Exception as exc:  # reported to the host as one line; the host decides what it means
        result["error"] = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
    result["seconds"] = round(time.time() - started, 2)
    print("EDGEKIT_ARM_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
