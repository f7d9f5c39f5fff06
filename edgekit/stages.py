"""An edgekit model taken apart into the stages dynamic inference needs: embed -> layer i -> head.

Early exit runs a head after an intermediate layer; token skipping removes tokens between layers.
Both need the forward pass one layer at a time, which Hugging Face models do not expose. `Stages`
calls the model's own submodules (embeddings, each layer, pooling / classifier head) in the order
the model's forward does, so `Stages(model)(ids, mask)` equals `model(ids, mask)` (tested), and
every stage reuses the teacher's weights: nothing is copied.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.model import ClassifierModel, EmbeddingModel, Pooling, pool
from edgekit.passes._saliency import Encoder


class Stages(nn.Module):
    """The forward pass of an `EmbeddingModel` / `ClassifierModel`, one stage at a time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, EmbeddingModel):
            self.task = "embedding"
            hf = model.encoder
            self.pooling: Pooling | None = model.pooling
        elif isinstance(model, ClassifierModel):
            self.task = "classification"
            hf = model.model
            self.pooling = None
        else:
            raise TypeError(f"Stages needs an EmbeddingModel or ClassifierModel, got {type(model).__name__}")
        self.use_token_type_ids = model.use_token_type_ids
        self.hf = hf
        enc = Encoder(hf)
        self.family = enc.family
        self.model_type = getattr(hf.config, "model_type", self.family)
        self.embeddings = enc.base.embeddings
        self.layers = enc.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        cfg = self.hf.config
        return int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0))

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.family == "distilbert":
            return self.embeddings(input_ids.long())
        if self.use_token_type_ids and token_type_ids is not None:
            return self.embeddings(input_ids=input_ids.long(), token_type_ids=token_type_ids.long())
        return self.embeddings(input_ids=input_ids.long())

    def attention_bias(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """What a layer takes as its mask: BERT's additive [B,1,1,L] bias, DistilBERT's [B,L] mask."""
        if self.family == "distilbert":
            return attention_mask.long()
        keep = attention_mask[:, None, None, :].to(torch.float32)
        return (1.0 - keep) * torch.finfo(torch.float32).min

    def layer(self, i: int, hidden: torch.Tensor, bias: torch.Tensor, output_attentions: bool = False):
        """Run layer `i`; with `output_attentions` return (hidden, attention probabilities [B,heads,L,L])."""
        mod = self.layers[i]
        if self.family == "distilbert":
            out = mod(hidden, attn_mask=bias, output_attentions=output_attentions)
            # DistilBERT's block returns (attention weights, states) when asked for attentions
            return (out[1], out[0]) if output_attentions else out[0]
        out = mod(hidden, attention_mask=bias, output_attentions=output_attentions)
        return (out[0], out[1]) if output_attentions else out[0]

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's output from its last hidden states: pooled embedding or logits."""
        if self.task == "embedding":
            assert self.pooling is not None
            return pool(hidden, attention_mask, self.pooling)
        return classifier_head(self.hf, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.embed(input_ids, token_type_ids)
        bias = self.attention_bias(attention_mask)
        for i in range(self.num_layers):
            hidden = self.layer(i, hidden, bias)
        return self.head(hidden, attention_mask)


def classifier_head(hf: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A sequence-classification model's head applied to token states (as its own forward does, eval mode)."""
    kind = getattr(hf.config, "model_type", "")
    if kind == "distilbert":
        return hf.classifier(torch.relu(hf.pre_classifier(hidden[:, 0])))
    if kind == "roberta":
        return hf.classifier(hidden)
    return hf.classifier(hf.bert.pooler(hidden))
