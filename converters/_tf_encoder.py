"""A TensorFlow mirror of `edgekit.stages.Stages` and the exit heads, built from the torch weights.

Why it exists: TFLite's `IF` op comes from `tf.cond` in a `tf.function`; litert-torch cannot lower
`torch.cond` and onnx2tf turns `If` into a select over both precomputed branches (DESIGN.md). So
the early-exit TFLite artifact is written from TensorFlow ops that replay the torch stages exactly:
BERT / RoBERTa / DistilBERT post-LayerNorm layers (with however many heads and FFN neurons the
passes left), embeddings, pooling, classifier heads and the exit decision. Every function here is
tested against its torch counterpart through the converted artifact (cosine >= 0.9999 at fp32).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgekit.errors import UnsupportedOpError
from edgekit.passes._saliency import _PATHS, _get

_LAYER_NORMS = {"bert": ("attention.output.LayerNorm", "output.LayerNorm"), "distilbert": ("sa_layer_norm", "output_layer_norm")}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class TFStages:
    """TF functions over constants copied from a `Stages` (and an `EarlyExitModel`'s heads)."""

    def __init__(self, stages) -> None:
        import tensorflow as tf

        self.tf = tf
        self.st = stages
        cfg = stages.hf.config
        self.family = stages.family
        self.model_type = stages.model_type
        heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0))
        self.head_dim = stages.hidden_size // heads
        act = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation", "gelu")
        if act not in ("gelu", "relu"):
            raise UnsupportedOpError(f"early exit for TFLite supports gelu/relu activations, this model uses {act}; use --formats onnx")
        self.act = act
        self.eps = float(getattr(cfg, "layer_norm_eps", 1e-12))
        self.pad_id = int(getattr(cfg, "pad_token_id", 0) or 0)

    # -- building blocks ---------------------------------------------------------------------------
    def const(self, t: torch.Tensor):
        return self.tf.constant(_np(t))

    def linear(self, mod: nn.Linear, x):
        tf = self.tf
        return tf.matmul(x, self.const(mod.weight), transpose_b=True) + self.const(mod.bias)

    def layer_norm(self, mod: nn.LayerNorm, x):
        tf = self.tf
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + float(mod.eps)) * self.const(mod.weight) + self.const(mod.bias)

    def activation(self, x):
        return self.tf.nn.gelu(x, approximate=False) if self.act == "gelu" else self.tf.nn.relu(x)

    # -- stages --------------------------------------------------------------------------------------
    def embed(self, input_ids, token_type_ids=None):
        tf = self.tf
        emb = self.st.embeddings
        ids = tf.cast(input_ids, tf.int32)
        length = tf.shape(ids)[1]
        x = tf.gather(self.const(emb.word_embeddings.weight), ids)
        if self.model_type == "roberta":
            not_pad = tf.cast(tf.not_equal(ids, self.pad_id), tf.int32)
            positions = tf.cumsum(not_pad, axis=1) * not_pad + self.pad_id
        else:
            positions = tf.range(length)[None, :]
        x = x + tf.gather(self.const(emb.position_embeddings.weight), positions)
        if self.family == "bert":
            tt = tf.zeros_like(ids) if token_type_ids is None else tf.cast(token_type_ids, tf.int32)
            x = x + tf.gather(self.const(emb.token_type_embeddings.weight), tt)
        return self.layer_norm(emb.LayerNorm, x)

    def attention_bias(self, attention_mask):
        tf = self.tf
        keep = tf.cast(attention_mask, tf.float32)[:, None, None, :]
        return (1.0 - keep) * float(torch.finfo(torch.float32).min)

    def layer(self, i: int, x, bias):
        tf = self.tf
        layer = self.st.layers[i]
        paths = _PATHS[self.family]
        q, k, v = (_get(layer, paths[r]) for r in ("q", "k", "v"))
        heads = q.weight.shape[0] // self.head_dim
        if heads == 0:
            raise UnsupportedOpError(f"layer {i} has no attention heads left; use --formats onnx")
        d = self.head_dim

        def split(t):
            t = tf.reshape(t, [1, -1, heads, d])
            return tf.transpose(t, [0, 2, 1, 3])

        qh, kh, vh = split(self.linear(q, x)), split(self.linear(k, x)), split(self.linear(v, x))
        scores = tf.matmul(qh, kh, transpose_b=True) / math.sqrt(d) + bias
        probs = tf.nn.softmax(scores, axis=-1)
        ctx = tf.reshape(tf.transpose(tf.matmul(probs, vh), [0, 2, 1, 3]), [1, -1, heads * d])
        ln1, ln2 = (_get(layer, p) for p in _LAYER_NORMS[self.family])
        x = self.layer_norm(ln1, self.linear(_get(layer, paths["o"]), ctx) + x)
        ffn = self.linear(_get(layer, paths["ffn_out"]), self.activation(self.linear(_get(layer, paths["ffn_in"]), x)))
        return self.layer_norm(ln2, ffn + x)

    def pool(self, hidden, attention_mask, mode: str, normalize: bool):
        tf = self.tf
        mask = tf.cast(attention_mask, tf.float32)[:, :, None]
        if mode == "cls":
            pooled = hidden[:, 0]
        elif mode == "max":
            pooled = tf.reduce_max(hidden + (mask - 1.0) * 1e4, axis=1)
        else:
            pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
        if normalize:
            pooled = pooled / tf.maximum(tf.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled

    def classifier(self, hf_or_head, hidden):
        """The classifier head on the first token (bert pooler+tanh, distilbert pre_classifier+relu, roberta dense+tanh)."""
        tf = self.tf
        first = hidden[:, 0]
        kind = self.model_type
        if kind == "distilbert":
            pre = hf_or_head.pre if hasattr(hf_or_head, "pre") else hf_or_head.pre_classifier
            return self.linear(hf_or_head.classifier, tf.nn.relu(self.linear(pre, first)))
        if kind == "roberta":
            head = hf_or_head.classifier
            return self.linear(head.out_proj, tf.tanh(self.linear(head.dense, first)))
        pooler = hf_or_head.pre if hasattr(hf_or_head, "pre") else hf_or_head.bert.pooler
        return self.linear(hf_or_head.classifier, tf.tanh(self.linear(pooler.dense, first)))

    def final_head(self, hidden, attention_mask):
        if self.st.task == "embedding":
            return self.pool(hidden, attention_mask, self.st.pooling.mode, self.st.pooling.normalize)
        return self.classifier(self.st.hf, hidden)

    def exit_head(self, head, hidden, attention_mask):
        """(output, confidence) of an `EmbeddingExitHead` / `ClassifierExitHead`."""
        tf = self.tf
        if self.st.task == "embedding":
            pooled = self.pool(hidden, attention_mask, head.pooling.mode, False)
            emb = self.linear(head.proj, pooled)
            if head.normalize:
                emb = emb / tf.maximum(tf.norm(emb, axis=-1, keepdims=True), 1e-12)
            conf = tf.sigmoid(self.linear(head.confidence, self.layer_norm(head.norm, pooled)))[:, 0]
            return emb, conf
        logits = self.classifier(head, hidden)
        return logits, tf.zeros([tf.shape(logits)[0]])

    def decide(self, criterion: str, out, conf, threshold: float, state):
        """TF twin of `edgekit.dynamic.decide`."""
        tf = self.tf
        if criterion == "confidence":
            return tf.reduce_all(conf > threshold), state
        probs = tf.nn.softmax(out, axis=-1)
        if criterion == "entropy":
            classes = int(out.shape[-1])
            ent = -tf.reduce_sum(probs * tf.math.log(tf.maximum(probs, 1e-12)), axis=-1) / math.log(max(classes, 2))
            return tf.reduce_all(ent < threshold), state
        if criterion == "max-prob":
            return tf.reduce_all(tf.reduce_max(probs, axis=-1) > threshold), state
        pred = tf.cast(tf.argmax(out, axis=-1), tf.float32)[:1]
        same = tf.equal(pred, state[0, :1])
        streak = tf.where(same, state[0, 1:] + 1.0, tf.zeros_like(pred))
        return tf.reduce_all(streak >= threshold), tf.stack([pred, streak], axis=1)
