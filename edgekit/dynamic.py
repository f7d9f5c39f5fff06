"""Dynamic-inference models: early exit (internal heads + an exit criterion) and token skipping.

Both keep the teacher's forward contract (`input_ids`, `attention_mask`[, `token_type_ids`]) and
are built on `Stages`, so they reuse the teacher's weights. Early exit is *control flow*: the
converters lower it from its `segments()` (embed + first layers + exit head + decision, then
layers + next head + decision, ..., then the rest) into ONNX `If`, TFLite `IF` and Core ML `cond`,
so the layers after an exit never run. Token skipping is plain tensor code (TopK + Gather, or
NonZero + Gather for the threshold form) that every converter lowers as it is.

Exit decisions (one per exit, batch 1 in the exported graphs; in torch a batch exits only when
every row would):
- `confidence` (embedding models): a learned head predicts the cosine between this exit's
  embedding and the final one; exit when it is > threshold.
- `entropy` (classifiers): entropy of softmax(logits) / log(classes) < threshold (DeeBERT).
- `max-prob` (classifiers): max softmax probability > threshold.
- `patience` (classifiers, PABEE): exit when the predicted class has stayed the same for
  `threshold` consecutive exits.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edgekit.model import Pooling, pool
from edgekit.stages import Stages

EMBEDDING_CRITERIA = ("confidence",)
CLASSIFIER_CRITERIA = ("entropy", "max-prob", "patience")


class EmbeddingExitHead(nn.Module):
    """Intermediate states -> (embedding in the final space, predicted cosine to the final embedding).

    The projection starts as the identity (an intermediate mean-pooled state already points roughly
    where the final embedding does) and is trained by self-distillation; the confidence head reads the
    layer-normalised pooled state.
    """

    def __init__(self, hidden: int, out: int, pooling: Pooling) -> None:
        super().__init__()
        self.pooling = Pooling(mode=pooling.mode, normalize=False)
        self.normalize = pooling.normalize
        self.proj = nn.Linear(hidden, out)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(out, hidden))
            self.proj.bias.zero_()
        self.norm = nn.LayerNorm(hidden)
        self.confidence = nn.Linear(hidden, 1)

    def from_pooled(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.proj(pooled)
        if self.normalize:
            emb = emb / emb.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
        conf = torch.sigmoid(self.confidence(self.norm(pooled))).squeeze(-1)
        return emb, conf

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_pooled(pool(hidden, attention_mask, self.pooling))


class ClassifierExitHead(nn.Module):
    """A copy of the classifier's own head (pooler / pre-classifier + classifier) at an intermediate layer.

    It reads only the first token, like the final head; starting from the final head's weights makes
    self-distillation converge in a few hundred steps.
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.kind = getattr(hf.config, "model_type", "bert")
        if self.kind == "distilbert":
            self.pre = copy.deepcopy(hf.pre_classifier)
        elif self.kind == "roberta":
            self.pre = None
        else:
            self.pre = copy.deepcopy(hf.bert.pooler)
        self.classifier = copy.deepcopy(hf.classifier)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = hidden[:, :1]
        if self.kind == "distilbert":
            logits = self.classifier(torch.relu(self.pre(first[:, 0])))
        elif self.kind == "roberta":
            logits = self.classifier(first)
        else:
            logits = self.classifier(self.pre(first))
        return logits, torch.zeros(logits.shape[0], dtype=logits.dtype)


def initial_state() -> torch.Tensor:
    """Decision state carried from exit to exit: (previous predicted class, agreeing streak); PABEE needs it."""
    return torch.tensor([[-1.0, 0.0]])


def decide(criterion: str, out: torch.Tensor, conf: torch.Tensor, threshold: torch.Tensor, state: torch.Tensor):
    """(exit now? as a 0-d bool, new state). Pure tensor code: it is exported inside the segments."""
    if criterion == "confidence":
        return (conf > threshold).all(), state
    probs = torch.softmax(out, dim=-1)
    if criterion == "entropy":
        classes = out.shape[-1]
        ent = -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1) / math.log(max(classes, 2))
        return (ent < threshold).all(), state
    if criterion == "max-prob":
        return (probs.amax(-1) > threshold).all(), state
    pred = out.argmax(-1).to(torch.float32)[:1]
    same = pred == state[0, :1]
    streak = torch.where(same, state[0, 1:] + 1.0, torch.zeros_like(pred))
    return (streak >= threshold).all(), torch.stack([pred, streak], dim=1)


class EarlyExitModel(nn.Module):
    """The teacher plus exit heads after `exits` (1-based layer counts); returns (output, exit_layer)."""

    def __init__(self, model: nn.Module, exits: list[int], criterion: str, threshold: float) -> None:
        super().__init__()
        self.stages = Stages(model)
        self.exits = sorted(exits)
        self.criterion = criterion
        self.register_buffer("threshold", torch.tensor([float(threshold)]))
        if self.stages.task == "embedding":
            assert self.stages.pooling is not None
            out = self.stages.hidden_size
            self.heads = nn.ModuleList(EmbeddingExitHead(self.stages.hidden_size, out, self.stages.pooling) for _ in self.exits)
        else:
            self.heads = nn.ModuleList(ClassifierExitHead(self.stages.hf) for _ in self.exits)

    @property
    def task(self) -> str:
        return self.stages.task

    @property
    def uses_state(self) -> bool:
        """Only patience carries a decision state from exit to exit; the other criteria look at one exit."""
        return self.criterion == "patience"

    @property
    def num_layers(self) -> int:
        return self.stages.num_layers

    @property
    def use_token_type_ids(self) -> bool:
        return self.stages.use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        st = self.stages
        hidden = st.embed(input_ids, token_type_ids)
        bias = st.attention_bias(attention_mask)
        state = initial_state()
        start = 0
        for head, layer in zip(self.heads, self.exits, strict=True):
            for i in range(start, layer):
                hidden = st.layer(i, hidden, bias)
            start = layer
            out, conf = head(hidden, attention_mask)
            flag, state = decide(self.criterion, out, conf, self.threshold, state)
            if bool(flag):
                return out, torch.tensor([layer], dtype=torch.int64)
        for i in range(start, st.num_layers):
            hidden = st.layer(i, hidden, bias)
        return st.head(hidden, attention_mask), torch.tensor([st.num_layers], dtype=torch.int64)

    def forced(self, exit_index: int | None) -> nn.Module:
        """A plain module computing the output of one fixed path (exit `exit_index`, or full depth for None)."""
        return _FixedPath(self, exit_index)

    def segments(self) -> list[nn.Module]:
        """The export units: `FirstSegment`, `MiddleSegment` per further exit, then `LastSegment`."""
        segs: list[nn.Module] = [FirstSegment(self)]
        segs += [MiddleSegment(self, j) for j in range(1, len(self.exits))]
        segs.append(LastSegment(self))
        return segs


class _FixedPath(nn.Module):
    def __init__(self, model: EarlyExitModel, exit_index: int | None) -> None:
        super().__init__()
        self.model = model
        self.exit_index = exit_index

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        m, st = self.model, self.model.stages
        hidden = st.embed(input_ids, token_type_ids)
        bias = st.attention_bias(attention_mask)
        stop = st.num_layers if self.exit_index is None else m.exits[self.exit_index]
        for i in range(stop):
            hidden = st.layer(i, hidden, bias)
        if self.exit_index is None:
            return st.head(hidden, attention_mask)
        return m.heads[self.exit_index](hidden, attention_mask)[0]


class FirstSegment(nn.Module):
    """(ids, mask[, type ids], threshold) -> (hidden, exit output, exit?[, state]): embeddings, layers up to exit 0, head, decision."""

    def __init__(self, model: EarlyExitModel) -> None:
        super().__init__()
        self.model = model
        self.stop = model.exits[0]

    def forward(self, input_ids, attention_mask, threshold, token_type_ids=None):
        m, st = self.model, self.model.stages
        hidden = st.embed(input_ids, token_type_ids)
        bias = st.attention_bias(attention_mask)
        for i in range(self.stop):
            hidden = st.layer(i, hidden, bias)
        out, conf = m.heads[0](hidden, attention_mask)
        flag, state = decide(m.criterion, out, conf, threshold, initial_state())
        return (hidden, out, flag, state) if m.uses_state else (hidden, out, flag)


class MiddleSegment(nn.Module):
    """(hidden, mask, threshold[, state]) -> (hidden, exit output, exit?[, state]) for exit `j` > 0 (state: patience only)."""

    def __init__(self, model: EarlyExitModel, j: int) -> None:
        super().__init__()
        self.model = model
        self.j = j
        self.start, self.stop = model.exits[j - 1], model.exits[j]

    def forward(self, hidden, attention_mask, threshold, state=None):
        m, st = self.model, self.model.stages
        bias = st.attention_bias(attention_mask)
        for i in range(self.start, self.stop):
            hidden = st.layer(i, hidden, bias)
        out, conf = m.heads[self.j](hidden, attention_mask)
        flag, state = decide(m.criterion, out, conf, threshold, initial_state() if state is None else state)
        return (hidden, out, flag, state) if m.uses_state else (hidden, out, flag)


class LastSegment(nn.Module):
    """(hidden, mask) -> final output: the layers after the last exit and the model's own head."""

    def __init__(self, model: EarlyExitModel) -> None:
        super().__init__()
        self.model = model
        self.start = model.exits[-1]

    def forward(self, hidden, attention_mask):
        st = self.model.stages
        bias = st.attention_bias(attention_mask)
        for i in range(self.start, st.num_layers):
            hidden = st.layer(i, hidden, bias)
        return st.head(hidden, attention_mask)


class TokenSkipModel(nn.Module):
    """The teacher with tokens removed after chosen layers (PoWER-BERT fixed counts or LTP-style threshold).

    A token's saliency is the attention it receives at that layer (summed over heads and over the
    real query tokens). `keep` mode keeps the top ceil(ratio x current length) tokens: a static
    count, so the exported graph has static shapes (TopK + Gather). `threshold` mode keeps tokens
    whose saliency is at least `threshold` x the mean saliency of the real tokens: a dynamic count
    (NonZero + Gather), batch 1. Padding is always dropped first and the first token ([CLS]) is
    always kept. Pooling afterwards sees only kept tokens: mean pooling averages the final states
    of the tokens that survived, which is what PoWER-BERT does.
    """

    def __init__(self, model: nn.Module, schedule: dict[int, float], mode: str = "keep") -> None:
        super().__init__()
        self.stages = Stages(model)
        self.schedule = dict(sorted(schedule.items()))
        self.mode = mode
        #: a fixed keep count per layer is computed from the traced length: the artifact's sequence axis is static
        self.static_sequence = mode == "keep"

    @property
    def task(self) -> str:
        return self.stages.task

    @property
    def use_token_type_ids(self) -> bool:
        return self.stages.use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        st = self.stages
        hidden = st.embed(input_ids, token_type_ids)
        mask = attention_mask
        bias = st.attention_bias(mask)
        for i in range(st.num_layers):
            value = self.schedule.get(i + 1)
            if value is None:
                hidden = st.layer(i, hidden, bias)
                continue
            hidden, probs = st.layer(i, hidden, bias, output_attentions=True)
            keep_idx = self._select(probs, mask, value)
            hidden = torch.gather(hidden, 1, keep_idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            mask = torch.gather(mask, 1, keep_idx)
            bias = st.attention_bias(mask)
        return st.head(hidden, mask)

    def _select(self, probs: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
        real = mask.to(probs.dtype)
        received = (probs * real[:, None, :, None]).sum(dim=(1, 2))  # [B, L]
        if self.mode == "keep":
            length = mask.shape[1]
            k = max(1, int(math.ceil(value * length)))
            # padding ranks below every real token, [CLS] above all of them
            score = torch.where(real > 0, received, torch.full_like(received, -1.0))
            score = torch.cat([torch.full_like(score[:, :1], 1e9), score[:, 1:]], dim=1)
            # topk orders by score, so [CLS] stays first (classifier heads read position 0); the order of the
            # other tokens does not matter after the embeddings: attention and pooling are permutation-invariant
            return torch.topk(score, k, dim=1).indices
        mean = (received * real).sum(-1, keepdim=True) / real.sum(-1, keepdim=True).clamp(min=1.0)
        keep = (received >= value * mean) & (real > 0)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)
        return torch.nonzero(keep[0]).reshape(1, -1)
