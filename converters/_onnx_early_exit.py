"""Early exit in ONNX: each segment exported, fused and quantized on its own, then composed under `If` nodes.

Why compose instead of exporting one scripted model: onnxruntime's transformer optimizer crashes on
graphs that contain `If` and dynamic quantization of subgraphs needs special options (DESIGN.md);
segments are plain graphs, so each gets the same BERT fusions and per-channel int8 as a normal
export. The composed graph is

    s0 (embeddings, layers 1..e0, exit head 0, decision) -> If(exit?)
        then: exit output 0, exit_layer = e0
        else: s1 (layers e0+1..e1, head 1, decision) -> If(exit?) ... else: last segment, exit_layer = L

so onnxruntime executes only the chosen branch: the layers after an exit never run. The exit
threshold is an initializer that is also a graph input (`exit_threshold`), so an app can override
it at run time without re-exporting; apps that do not feed it get the calibrated value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from converters.base import EXIT_LAYER, Artifact, ExportSpec

THRESHOLD = "exit_threshold"


def _segment_io(model, j: int, n_segments: int, model_inputs: list[str]) -> tuple[list[str], list[str]]:
    state_in, state_out = (["state"], ["state_out"]) if model.uses_state else ([], [])
    if j == 0:
        return model_inputs + [THRESHOLD], ["hidden_out", "out", "exit"] + state_out
    if j < n_segments - 1:
        return ["hidden", "attention_mask", THRESHOLD] + state_in, ["hidden_out", "out", "exit"] + state_out
    return ["hidden", "attention_mask"], ["out"]


@torch.no_grad()
def _segment_feeds(model, spec: ExportSpec, rows: list[dict[str, np.ndarray]]) -> list[list[dict[str, np.ndarray]]]:
    """Example / calibration inputs of every segment: run the torch segments in order on each row."""
    segs = model.segments()
    feeds: list[list[dict[str, np.ndarray]]] = [[] for _ in segs]
    thr = model.threshold.detach().clone()
    for row in rows:
        ids = {k: torch.from_numpy(np.asarray(row[k], dtype=np.int64)) for k in spec.input_names}
        feeds[0].append({**{k: v.numpy() for k, v in ids.items()}, THRESHOLD: thr.numpy()})
        hidden, _, _, *state = segs[0](ids["input_ids"], ids["attention_mask"], thr, ids.get("token_type_ids"))
        for j in range(1, len(segs)):
            common = {"hidden": hidden.numpy(), "attention_mask": ids["attention_mask"].numpy()}
            if j < len(segs) - 1:
                feeds[j].append(common | {THRESHOLD: thr.numpy()} | ({"state": state[0].numpy()} if state else {}))
                hidden, _, _, *state = segs[j](hidden, ids["attention_mask"], thr, *state)
            else:
                feeds[j].append(common)
    return feeds


def _export_segments(conv, model, spec: ExportSpec, workdir: Path) -> tuple[list, list[str]]:
    """ONNX protos of every segment, optimised and lowered to the precision; plus notes."""

    from converters.onnx import torchscript_export

    segs = model.segments()
    rows = [spec.example_inputs] + list(spec.calibration_inputs)
    feeds = _segment_feeds(model, spec, rows)
    protos = []
    for j, seg in enumerate(segs):
        names_in, names_out = _segment_io(model, j, len(segs), list(spec.input_names))
        example = feeds[j][0]
        args = tuple(torch.from_numpy(example[n]) for n in names_in)
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names_in if n in ("input_ids", "attention_mask", "token_type_ids", "hidden")}
        raw = workdir / f".{spec.stem}.seg{j}.raw.onnx"
        torchscript_export(_Named(seg), args, raw, names_in, names_out, dynamic, spec.opset)
        try:
            protos.append(conv._optimize(raw, model))
        finally:
            raw.unlink(missing_ok=True)
    notes = [f"early exit: {len(segs)} segments exported separately, fused, then composed under nested If nodes"]
    if spec.precision == "fp16":
        protos = [conv._to_fp16(p) for p in protos]
        notes.append("fp16 weights and activations inside every segment, fp32 at segment boundaries")
    elif spec.precision == "int8":
        from converters._onnx_int8 import quantize_int8

        quantized = []
        for j, proto in enumerate(protos):
            # exit heads and their confidence stay fp32: int8 noise there moves exit decisions (measured on
            # all-MiniLM-L6-v2: 10% instead of 2% exits at layer 4, mean cosine 0.980 instead of 0.995)
            heads = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and "/heads." in n.name]
            heads += [f"{name}_MatMul" for name in heads]  # the quantizer renames a Gemm to <name>_MatMul before excluding
            segment, plan = quantize_int8(proto, feeds[j][1:] or feeds[j], workdir, exclude=heads, min_fidelity=spec.min_fidelity)
            quantized.append(segment)
            notes.extend(f"segment {j}: {note}" for note in plan.notes()[1:])
        protos = quantized
        notes.append("int8: dynamic quantization of every segment, per-channel int8 weights; exit heads kept in fp32")
    return protos, notes


class _Named(torch.nn.Module):
    """Calls a segment by the graph's input names (`exit_threshold` is the segments' `threshold` argument)."""

    def __init__(self, seg: torch.nn.Module) -> None:
        super().__init__()
        self.seg = seg

    def forward(self, **kwargs):
        if THRESHOLD in kwargs:
            kwargs["threshold"] = kwargs.pop(THRESHOLD)
        return self.seg(**kwargs)


def _rename_graph(graph, prefix: str, mapping: dict[str, str]):
    """Nodes and initializers of a segment graph with every tensor name prefixed, except `mapping`'s."""

    def rn(name: str) -> str:
        if not name:
            return name
        return mapping.get(name, prefix + name)

    nodes = []
    for k, node in enumerate(graph.node):
        node.input[:] = [rn(x) for x in node.input]
        node.output[:] = [rn(x) for x in node.output]
        node.name = f"{prefix}{k}_{node.name or node.op_type}"
        nodes.append(node)
    inits = []
    for init in graph.initializer:
        init.name = rn(init.name)
        inits.append(init)
    return nodes, inits, rn


def compose(protos: list, model, spec: ExportSpec, output_name: str, exit_layers: list[int], n_layers: int, threshold: float):
    """One ModelProto: segment 0 in the main graph, the rest nested in `If` else-branches."""
    import onnx
    from onnx import TensorProto, helper

    out_type = TensorProto.FLOAT
    all_inits = []

    def out_info(name: str, shape) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, out_type, shape)

    def layer_const(name: str, value: int):
        return helper.make_node(
            "Constant", [], [name], name=f"{name}_const", value=helper.make_tensor(name, TensorProto.INT64, [1], [value])
        )

    n_seg = len(protos)
    # the outer names each segment's inputs bind to
    base_inputs = {n: n for n in spec.input_names} | {THRESHOLD: THRESHOLD}

    def build(j: int, bound: dict[str, str]):
        """Nodes computing segment j and everything after it; returns (nodes, final output name, exit-layer name)."""
        prefix = f"s{j}/"
        nodes, inits, rn = _rename_graph(protos[j].graph, prefix, bound)
        all_inits.extend(inits)
        if j == n_seg - 1:
            layer_name = f"{prefix}{EXIT_LAYER}"
            return nodes + [layer_const(layer_name, n_layers)], rn("out"), layer_name
        then_out, then_layer = f"{prefix}then_out", f"{prefix}then_layer"
        then_graph = helper.make_graph(
            [
                helper.make_node("Identity", [rn("out")], [then_out], name=f"{prefix}then_identity"),
                layer_const(then_layer, exit_layers[j]),
            ],
            f"exit_after_layer_{exit_layers[j]}",
            [],
            [out_info(then_out, None), helper.make_tensor_value_info(then_layer, TensorProto.INT64, [1])],
        )
        nxt = {"hidden": rn("hidden_out"), "attention_mask": "attention_mask", THRESHOLD: THRESHOLD}
        if model.uses_state:
            nxt["state"] = rn("state_out")
        else_nodes, else_out, else_layer = build(j + 1, nxt)
        else_out_id, else_layer_id = f"{prefix}else_out", f"{prefix}else_layer"
        else_nodes = else_nodes + [
            helper.make_node("Identity", [else_out], [else_out_id], name=f"{prefix}else_identity_out"),
            helper.make_node("Identity", [else_layer], [else_layer_id], name=f"{prefix}else_identity_layer"),
        ]
        else_graph = helper.make_graph(
            else_nodes,
            f"continue_after_layer_{exit_layers[j]}",
            [],
            [out_info(else_out_id, None), helper.make_tensor_value_info(else_layer_id, TensorProto.INT64, [1])],
        )
        if_out, if_layer = f"{prefix}if_out", f"{prefix}if_layer"
        if_node = helper.make_node(
            "If",
            [rn("exit")],
            [if_out, if_layer],
            name=f"{prefix}exit_if_layer_{exit_layers[j]}",
            then_branch=then_graph,
            else_branch=else_graph,
        )
        return nodes + [if_node], if_out, if_layer

    nodes, final_out, final_layer = build(0, base_inputs)
    nodes += [
        helper.make_node("Identity", [final_out], [output_name], name="output_identity"),
        helper.make_node("Identity", [final_layer], [EXIT_LAYER], name="exit_layer_identity"),
    ]
    threshold_init = helper.make_tensor(THRESHOLD, TensorProto.FLOAT, [1], [float(threshold)])
    first_inputs = {i.name: i for i in protos[0].graph.input}
    graph_inputs = [first_inputs[n] for n in spec.input_names] + [helper.make_tensor_value_info(THRESHOLD, TensorProto.FLOAT, [1])]
    last_out = protos[-1].graph.output[0]
    out_shape = [d.dim_param or d.dim_value for d in last_out.type.tensor_type.shape.dim]
    graph = helper.make_graph(
        nodes,
        "edgekit_early_exit",
        graph_inputs,
        [out_info(output_name, out_shape), helper.make_tensor_value_info(EXIT_LAYER, TensorProto.INT64, [1])],
        initializer=[threshold_init, *all_inits],
    )
    opsets: dict[str, int] = {}
    for p in protos:
        for o in p.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    composed = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], producer_name="edgekit")
    composed.ir_version = max(p.ir_version for p in protos)
    return composed


def lower_early_exit(conv, model, spec: ExportSpec, workdir: Path) -> Artifact:
    import onnx

    from converters.onnx import _specs, embedding_table_bytes, op_histogram

    conv.check_precision(spec.precision)
    workdir.mkdir(parents=True, exist_ok=True)
    protos, notes = _export_segments(conv, model, spec, workdir)
    threshold = float(model.threshold[0])
    composed = compose(protos, model, spec, spec.output_names[0], model.exits, model.num_layers, threshold)
    onnx.checker.check_model(composed)
    target = workdir / f"{spec.stem}{conv.suffix}"
    onnx.save_model(composed, str(target))
    saved = onnx.load(str(target))
    notes += [
        f"criterion {model.criterion}, threshold {threshold:g} (graph input '{THRESHOLD}' with this default: feed it to override)",
        f"outputs '{spec.output_names[0]}' and '{EXIT_LAYER}' (layers run: one of {model.exits + [model.num_layers]})",
        f"opset {max(17, spec.opset)}",
        "dynamic axes: batch, sequence (the exit decision is per batch: a batch exits when every row would)",
    ]
    inputs = [s for s in _specs(saved.graph.input) if s.name != THRESHOLD]
    return Artifact(
        format=conv.format,
        precision=spec.precision,
        path=target,
        inputs=inputs,
        outputs=_specs(saved.graph.output),
        ops=op_histogram(saved),
        embedding_bytes=embedding_table_bytes(saved),
        notes=notes,
    )
