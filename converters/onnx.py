"""ONNX export: torch.onnx (TorchScript exporter), onnxruntime's transformer fusions,
then fp16 conversion or dynamic int8 quantization (smoothed, see `_onnx_int8`); runs in onnxruntime.

Why these choices (measured, see DESIGN.md): the TorchScript exporter exports MiniLM in
~1.5 s and the ORT optimizer fuses its output into Attention / SkipLayerNorm /
EmbedLayerNorm / BiasGelu; per-channel int8 weights with smoothed activations keep mean cosine
~0.993 where plain per-channel dynamic int8 reaches 0.989 and per-tensor (Optimum's default) ~0.953.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from converters.base import (
    MEASURED_HOST,
    Artifact,
    Converter,
    ExportSpec,
    TensorSpec,
    cast_inputs,
    register_converter,
)
from edgekit.errors import UnsupportedOpError, UserError


def weight_only_precision(precision: str) -> bool:
    return precision in ("int8-weights", "int4-weights")


_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 9: "bool"}


class _Positional(torch.nn.Module):
    """Fixes the positional argument order to the artifact's input names."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, args, strict=True)))


def op_histogram(model) -> dict[str, int]:
    """Op types of every node, including nodes inside subgraphs (If/Loop bodies)."""
    counts: Counter[str] = Counter()

    def walk(graph) -> None:
        for node in graph.node:
            counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return dict(sorted(counts.items()))


def embedding_table_bytes(model) -> int:
    """Bytes of the initializers used as embedding tables (Gather data / EmbedLayerNormalization tables)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    tables: set[str] = set()
    for node in model.graph.node:
        table = dequantized.get(node.input[0], node.input[0]) if node.op_type == "Gather" else None
        if table in inits and len(inits[table].dims) == 2:
            tables.add(table)
        elif node.op_type == "GatherBlockQuantized" and node.input[0] in inits:  # weight-only: data, scales, zero points
            tables.update(name for i, name in enumerate(node.input) if i != 1 and name in inits)
        elif node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
            tables.update(name for name in node.input[2:5] if name in inits)
    # A quantized table is stored as int8 + scale: count the integer tensor behind a DequantizeLinear too.
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in list(tables):
        if name not in inits and name in producers:
            tables.update(i for i in producers[name].input if i in inits)
    # raw_data is what the file stores (int4 is packed two per byte; to_array would unpack it)
    return int(sum(len(inits[n].raw_data) or numpy_helper.to_array(inits[n]).nbytes for n in tables))


def dedupe_initializers(model) -> int:
    """Point every use of a byte-identical initializer at one copy; returns the bytes saved.

    Layers that share weights (share-layers, tied embeddings) are one tensor in torch, but fusions
    (the packed QKV of each Attention node) and quantization make a copy per use.
    """
    import hashlib

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    saved = 0
    for init in model.graph.initializer:
        raw = init.SerializeToString(deterministic=True).replace(init.name.encode(), b"")
        key = (init.data_type, tuple(init.dims), hashlib.sha256(raw).hexdigest())
        if key in first:
            rename[init.name] = first[key]
            saved += len(raw)
        else:
            first[key] = init.name
            kept.append(init)
    if not rename:
        return 0
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)

    def walk(graph) -> None:
        for node in graph.node:
            node.input[:] = [rename.get(name, name) for name in node.input]
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return saved


def _specs(values) -> list[TensorSpec]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        out.append(TensorSpec(v.name, _ONNX_TO_NUMPY.get(t.elem_type, str(t.elem_type)), shape))
    return out


def hf_config(model: torch.nn.Module):
    """The Hugging Face config inside an edgekit model (plain, dynamic, or one segment of a dynamic one)."""
    for owner in (model, getattr(model, "model", None), getattr(model, "stages", None)):
        inner = getattr(owner, "encoder", None) or getattr(owner, "model", None) or getattr(owner, "hf", None)
        if inner is not None and hasattr(inner, "config"):
            return inner.config
        stages = getattr(owner, "stages", None)
        if stages is not None:
            return stages.hf.config
    return None


def torchscript_export(
    module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str], dynamic: dict, opset: int
) -> None:
    """torch.onnx.export with the TorchScript exporter; a failure becomes a one-line UnsupportedOpError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Positional(module, input_names).eval(),
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic,
                opset_version=max(17, opset),
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter's message names the unsupported op
        path.unlink(missing_ok=True)
        raise UnsupportedOpError(
            f"ONNX export failed: {str(exc).splitlines()[0][:200]}; "
            "drop the pass that introduced this op or export another format with --formats"
        ) from exc


@register_converter
class ONNXConverter(Converter):
    format = "onnx"
    precisions = ("fp32", "fp16", "int8", "int8-static", "int8-weights", "int4-weights")
    input_dtype = "int64"
    lowers_control_flow = True
    mixed_precision = True
    suffix = ".onnx"

    def lower(self, model: torch.nn.Module, spec: ExportSpec, workdir: Path) -> Artifact:
        import onnx

        self.check_precision(spec.precision)
        workdir.mkdir(parents=True, exist_ok=True)
        target = workdir / f"{spec.stem}{self.suffix}"
        raw = workdir / f".{spec.stem}.raw.onnx"
        if hasattr(model, "segments"):  # early exit: segments composed under If nodes
            if weight_only_precision(spec.precision):
                raise UserError(f"onnx: precision '{spec.precision}' is not implemented for early-exit models; use fp32, fp16 or int8")
            if spec.precision == "int8-static":
                raise UserError("onnx int8-static does not support early-exit models yet; use int8 (dynamic) with early exit")
            from converters._onnx_early_exit import lower_early_exit

            return lower_early_exit(self, model, spec, workdir)
        if spec.precision == "int8-static":  # QDQ int8 weights + calibrated int8 activations
            from converters._onnx_static import lower_static

            return lower_static(self, model, spec, workdir)
        args = tuple(torch.from_numpy(np.asarray(spec.example_inputs[n][:1], dtype=np.int64)) for n in spec.input_names)
        static_sequence = bool(getattr(model, "static_sequence", False))
        dynamic = {n: {0: "batch"} if static_sequence else {0: "batch", 1: "sequence"} for n in spec.input_names}
        dynamic[spec.output_names[0]] = {0: "batch"}
        torchscript_export(model, args, raw, spec.input_names, spec.output_names, dynamic, spec.opset)
        try:
            weight_only = weight_only_precision(spec.precision)
            model_proto = self._optimize(raw, model, weight_only=weight_only)
            deduped = dedupe_initializers(model_proto)
            notes = [
                "graph optimised by onnxruntime.transformers (BERT fusions)",
                f"opset {max(17, spec.opset)}",
                "dynamic axes: batch" if static_sequence else "dynamic axes: batch, sequence",
            ]
            if spec.precision == "fp16":
                model_proto = self._to_fp16(model_proto)
                deduped += dedupe_initializers(model_proto)
                notes.append("fp16 weights and activations, fp32 inputs/outputs kept")
                onnx.save_model(model_proto, str(target))
            elif weight_only:
                from converters._onnx_weight_only import quantize_weight_only

                model_proto, wo_notes = quantize_weight_only(model_proto, spec.precision)
                deduped += dedupe_initializers(model_proto)
                notes = [n for n in notes if not n.startswith("opset")] + wo_notes
                onnx.save_model(model_proto, str(target))
            elif spec.precision == "int8":
                from converters._onnx_int8 import quantize_int8

                quantized, plan = quantize_int8(
                    model_proto, spec.calibration_inputs or [spec.example_inputs], workdir, min_fidelity=spec.min_fidelity
                )
                deduped += dedupe_initializers(quantized)
                onnx.save_model(quantized, str(target))
                notes.extend(plan.notes())
            else:
                onnx.save_model(model_proto, str(target))
            if deduped >= 0.01 * target.stat().st_size:  # shared layers, not the odd repeated small constant
                notes.append(f"identical weights stored once (shared layers): {deduped / 1e6:.2f} MB of copies removed")
        finally:
            raw.unlink(missing_ok=True)
        saved = onnx.load(str(target))
        onnx.checker.check_model(saved)
        return Artifact(
            format=self.format,
            precision=spec.precision,
            path=target,
            inputs=_specs(saved.graph.input),
            outputs=_specs(saved.graph.output),
            ops=op_histogram(saved),
            embedding_bytes=embedding_table_bytes(saved),
            notes=notes,
        )

    @staticmethod
    def _optimize(raw: Path, model: torch.nn.Module, weight_only: bool = False):
        """BERT fusions of onnxruntime.transformers (hardware-independent: opt_level 0 in ORT terms).

        `weight_only`: fusions that keep every weight a MatMul / Gather input (see `_onnx_weight_only`).
        """
        import onnx
        from onnxruntime.transformers.optimizer import optimize_model

        # fusion_attention warns about hidden size vs q/k/v width after head pruning; the fused op is exact.
        for name in ("onnxruntime.transformers", "fusion_attention"):
            logging.getLogger(name).setLevel(logging.ERROR)
        cfg = hf_config(model)
        heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0) or 0)
        hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0) or 0)
        try:
            options = None
            if weight_only:
                from converters._onnx_weight_only import fusion_options

                options = fusion_options()
            optimized = optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                       optimization_options=options)
        except Exception:  # fusion is an optimisation, never a reason to fail the export
            return onnx.load(str(raw))
        proto = optimized.model
        domains = {n.domain for n in proto.graph.node}
        if "com.microsoft" in domains and not any(o.domain == "com.microsoft" for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        return proto

    @staticmethod
    def _to_fp16(model_proto):
        from onnxruntime.transformers.onnx_model import OnnxModel

        wrapped = OnnxModel(model_proto)
        wrapped.convert_float_to_float16(keep_io_types=True)
        return wrapped.model

    def runtime(self, artifact: Artifact, threads: int) -> ORTRuntime:
        return ORTRuntime(artifact, threads)


class ORTRuntime:
    """onnxruntime CPU session with a fixed intra-op thread count."""

    name = "onnxruntime"
    provenance = MEASURED_HOST
    measures_latency = True

    def __init__(self, artifact: Artifact, threads: int) -> None:
        import onnxruntime as ort

        self.version = ort.__version__
        self.threads = threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])
        self._inputs = artifact.inputs
        self._output_names = [o.name for o in artifact.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = cast_inputs(inputs, self._inputs)
        return dict(zip(self._output_names, self._session.run(self._output_names, feeds), strict=True))
