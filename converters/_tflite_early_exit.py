"""Early exit in TFLite: nested `tf.cond` over TensorFlow stages, converted with builtin ops only -> `IF` ops.

The main subgraph runs the embeddings, the layers up to the first exit, its head and decision,
then an `IF` whose else-subgraph holds the next layers (and the next `IF`): the interpreter only
invokes the chosen subgraph, so layers after an exit do not run. The threshold is a constant of the
graph (TFLite inputs have no defaults): re-export to change it. Quantization is the same
ai-edge-quantizer recipe as every other TFLite artifact, applied to all subgraphs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from converters.base import EXIT_LAYER, Artifact, ExportSpec


def _serving_function(model, spec: ExportSpec):
    import tensorflow as tf

    from converters._tf_encoder import TFStages

    tfs = TFStages(model.stages)
    threshold = float(model.threshold[0])
    exits, n_layers, criterion = list(model.exits), model.num_layers, model.criterion
    out_name = spec.output_names[0]
    signature = [tf.TensorSpec([1, spec.seq_len], tf.int32, name=n) for n in spec.input_names]

    def run_from(j: int, hidden, bias, mask, state):
        """Layers after exit j-1 up to exit j, its head and decision, then IF (exit) ELSE (continue)."""
        start = exits[j - 1] if j > 0 else 0
        if j == len(exits):
            for i in range(start, n_layers):
                hidden = tfs.layer(i, hidden, bias)
            return tfs.final_head(hidden, mask), tf.constant([n_layers], tf.int32)
        for i in range(start, exits[j]):
            hidden = tfs.layer(i, hidden, bias)
        out, conf = tfs.exit_head(model.heads[j], hidden, mask)
        flag, state = tfs.decide(criterion, out, conf, threshold, state)
        layer = exits[j]
        return tf.cond(
            flag,
            lambda: (tf.identity(out), tf.constant([layer], tf.int32)),
            lambda: run_from(j + 1, hidden, bias, mask, state),
        )

    @tf.function(input_signature=signature)
    def serve(*args):
        named = dict(zip(spec.input_names, args, strict=True))
        mask = named["attention_mask"]
        hidden = tfs.embed(named["input_ids"], named.get("token_type_ids"))
        out, layer = run_from(0, hidden, tfs.attention_bias(mask), mask, tf.constant([[-1.0, 0.0]]))
        return {out_name: out, EXIT_LAYER: layer}

    return serve


def lower_early_exit(conv, model, spec: ExportSpec, workdir: Path) -> Artifact:
    import tensorflow as tf

    from converters.tflite import (
        PRECISION_NOTES,
        SIGNATURE_KEY,
        SUFFIX,
        _tool_versions,
        finish_artifact,
        quantize_tflite,
    )

    conv.check_precision(spec.precision)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    serve = _serving_function(model, spec)
    # through a SavedModel: that is the converter route that writes the named signature apps call
    with tempfile.TemporaryDirectory(prefix=".tf-early-exit-", dir=workdir) as saved:
        holder = tf.Module()
        holder.serve = serve
        tf.saved_model.save(holder, saved, signatures={SIGNATURE_KEY: serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE_KEY])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if spec.precision == "int8":
            # the TF converter's dynamic-range int8 also covers the embedding GATHER (ai-edge-quantizer's
            # recipe quantizes EMBEDDING_LOOKUP, which litert-torch emits, but not GATHER)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = bytes(converter.convert())
    if spec.precision == "fp16":
        data = quantize_tflite(data, spec.precision)
    path = workdir / f"{spec.stem}{SUFFIX}"
    threshold = float(model.threshold[0])
    notes = [
        f"early exit: {len(model.exits)} nested IF ops from tf.cond over TensorFlow stages built from the torch weights",
        f"criterion {model.criterion}, threshold {threshold:g} baked into the graph (re-export to change it)",
        "int8: TF converter dynamic-range quantization (int8 weights incl. the embedding table, float activations)"
        if spec.precision == "int8"
        else PRECISION_NOTES[spec.precision],
        f"signature '{SIGNATURE_KEY}': inputs {', '.join(spec.input_names)} (int32), outputs {', '.join(spec.output_names)}; "
        "builtin ops only",
        f"tensorflow {tf.__version__}; " + _tool_versions(spec.precision),
    ]
    return finish_artifact(conv.format, spec, data, path, notes)
