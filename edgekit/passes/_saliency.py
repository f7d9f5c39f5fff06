"""Shared by the structured-pruning and low-rank passes: where the units live in an HF encoder,
how many parameters a model has, and how salient each unit is on sample texts.

Structure: BERT-like encoders (BERT, MiniLM, RoBERTa: `encoder.layer[i].attention.self.query`...)
and DistilBERT (`transformer.layer[i].attention.q_lin`...) are described by one table of
attribute paths, so every pass reads and replaces q/k/v/o and the two FFN linears the same way.

Saliency ("taylor"): each unit (attention head, FFN neuron, layer) gets a gate g = 1 in the
forward pass (head and neuron gates scale the input of the output projection, exactly what HF's
`head_mask` does; a layer gate scales its residual update). Removing the unit is g = 0. The loss is
output-level, against the model's own unpruned outputs (cosine distance for embeddings, KL for
logits). That loss sits at its minimum when g = 1, so its plain gradient is zero and |grad * g|
would rank nothing; the first non-vanishing Taylor term is quadratic, E[(dL/dg)^2]-shaped. We
estimate it as the Fisher information of the gate (Molchanov et al. 2019, Kwon et al. 2022):
backpropagate random output directions v drawn with the loss's curvature (for KL: sampled labels,
v = onehot(y) - p; for cosine: Gaussian directions orthogonal to the embedding) and accumulate
the squared gate gradients. Importance_u ~= 2 x the expected loss increase when u is removed, to
first order in the output change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgekit.errors import UserError

#: attribute paths inside one transformer layer, per encoder family
_PATHS: dict[str, dict[str, str]] = {
    "bert": {
        "attention": "attention",
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    "distilbert": {
        "attention": "attention",
        "q": "attention.q_lin",
        "k": "attention.k_lin",
        "v": "attention.v_lin",
        "o": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
    },
}
ATTENTION_ROLES = ("q", "k", "v", "o")
FFN_ROLES = ("ffn_in", "ffn_out")


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, value)


class Encoder:
    """The HF transformer inside an edgekit model (`EmbeddingModel.encoder`, `ClassifierModel.model`)."""

    def __init__(self, hf: nn.Module) -> None:
        self.hf = hf  # the PreTrainedModel (BertModel, DistilBertForSequenceClassification, ...)
        self.base = getattr(hf, "base_model", hf)
        if hasattr(self.base, "encoder") and hasattr(self.base.encoder, "layer"):
            self.family = "bert"
            self._stack = self.base.encoder
        elif hasattr(self.base, "transformer") and hasattr(self.base.transformer, "layer"):
            self.family = "distilbert"
            self._stack = self.base.transformer
        else:
            raise UserError(
                f"{type(self.base).__name__} has no BERT- or DistilBERT-style layer stack; structured passes support those encoders"
            )
        self.config = self.hf.config
        self.paths = _PATHS[self.family]

    # -- layers -----------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self._stack.layer

    def __len__(self) -> int:
        return len(self.layers)

    def set_layers(self, keep: list[int]) -> None:
        """Keep only the layers at `keep` (indices into the current stack), updating the config."""
        kept = nn.ModuleList([self.layers[i] for i in keep])
        self._stack.layer = kept
        if self.family == "bert":
            self.config.num_hidden_layers = len(kept)
        else:
            self.config.n_layers = len(kept)
            self._stack.n_layers = len(kept)
        # HF records pruned heads by layer index: re-key them to the new positions.
        pruned = getattr(self.config, "pruned_heads", None) or {}
        self.config.pruned_heads = {new: pruned[old] for new, old in enumerate(keep) if old in pruned}

    @contextmanager
    def only_layers(self, keep: list[int]) -> Iterator[None]:
        """Temporarily run with a subset of layers (nothing else changes)."""
        saved = self._stack.layer
        self._stack.layer = nn.ModuleList([saved[i] for i in keep])
        try:
            yield
        finally:
            self._stack.layer = saved

    # -- units inside a layer -----------------------------------------------------------------------
    def get(self, i: int, role: str) -> Any:
        return _get(self.layers[i], self.paths[role])

    def set(self, i: int, role: str, module: nn.Module) -> None:
        _set(self.layers[i], self.paths[role], module)

    def linear(self, i: int, role: str, pass_name: str) -> nn.Linear:
        """The plain `nn.Linear` at `role`; a factorized one (svd ran first) cannot be pruned."""
        mod = self.get(i, role)
        if not isinstance(mod, nn.Linear):
            raise UserError(
                f"{pass_name}: layer {i} {role} is a {type(mod).__name__}, not a dense Linear; put {pass_name} before svd in the recipe"
            )
        return mod

    def head_size(self, i: int) -> int:
        att = self.get(i, "attention")
        return int(att.self.attention_head_size if self.family == "bert" else att.attention_head_size)

    def num_heads(self, i: int) -> int:
        att = self.get(i, "attention")
        return int(att.self.num_attention_heads if self.family == "bert" else att.n_heads)

    def pruned_heads(self, i: int) -> set[int]:
        return set(self.get(i, "attention").pruned_heads)

    def original_head_ids(self, i: int) -> list[int]:
        """Original (as HF's `prune_heads` counts them) index of each head the layer still has."""
        pruned = self.pruned_heads(i)
        total = self.num_heads(i) + len(pruned)
        return [h for h in range(total) if h not in pruned]

    def ffn_size(self, i: int) -> int:
        mod = self.get(i, "ffn_in")
        return int(mod.out_features)

    def linears(self, roles: tuple[str, ...]) -> Iterator[tuple[int, str]]:
        for i in range(len(self)):
            for role in roles:
                yield i, role


def find_encoder(model: nn.Module) -> Encoder:
    """The HF encoder inside an `EmbeddingModel` / `ClassifierModel` (or an HF model given directly)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return Encoder(model)
    for attr in ("encoder", "model"):
        inner = getattr(model, attr, None)
        if isinstance(inner, PreTrainedModel):
            return Encoder(inner)
    raise UserError(f"cannot find a Hugging Face encoder inside {type(model).__name__}; structured passes need a BERT or DistilBERT model")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def add_record(ctx: Any, name: str, config: Any, before: int, after: int, removed: dict[str, Any], notes: list[str] | None = None) -> dict:
    record = {
        "pass": name,
        "config": config.model_dump(mode="json"),
        "params_before": before,
        "params_after": after,
        "params_removed": before - after,
        "removed": removed,
        "notes": list(notes or []),
    }
    if ctx is not None and getattr(ctx, "records", None) is not None:
        ctx.records.append(record)
    return record


# ---------------------------------------------------------------------------------------------------
# Data and output-level losses
# ---------------------------------------------------------------------------------------------------


def task_of(model: nn.Module, ctx: Any) -> str:
    """'classification' for logits models, 'embedding' for pooled embeddings."""
    from edgekit.model import ClassifierModel, EmbeddingModel

    if isinstance(model, ClassifierModel):
        return "classification"
    if isinstance(model, EmbeddingModel):
        return "embedding"
    return str(getattr(getattr(ctx, "teacher", None), "task", "embedding"))


@dataclass
class Calibration:
    batches: list[dict[str, torch.Tensor]]
    task: str


def calibration(model: nn.Module, ctx: Any, samples: int, pass_name: str, batch_size: int = 16) -> Calibration:
    """Tokenised sample texts from `ctx` (the first `samples`), batched by length and trimmed to
    each batch's longest text, so calibration costs what the texts need, not the static length."""
    texts = list(getattr(ctx, "texts", None) or [])[:samples]
    teacher = getattr(ctx, "teacher", None)
    if not texts or teacher is None:
        raise UserError(
            f"{pass_name}: needs sample texts and the teacher's tokenizer for its saliency/reconstruction; give texts, "
            "or use saliency=magnitude with reconstruct=false"
        )
    seq_len = int(getattr(ctx, "seq_len", 0) or 128)
    enc = teacher.tokenize(texts, seq_len)
    lengths = enc["attention_mask"].sum(axis=1)
    order = lengths.argsort(kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(1, int(lengths[idx].max()))
        batches.append({k: torch.from_numpy(v[idx, :longest]).long() for k, v in enc.items()})
    return Calibration(batches, task_of(model, ctx))


def output_distance(out: torch.Tensor, ref: torch.Tensor, task: str) -> torch.Tensor:
    """Per-row distance to the unpruned outputs: 1 - cosine (embeddings), KL(ref || out) (logits)."""
    out, ref = out.double(), ref.double()
    if task == "classification":
        logp_ref = torch.log_softmax(ref, dim=-1)
        return (logp_ref.exp() * (logp_ref - torch.log_softmax(out, dim=-1))).sum(-1)
    return 1.0 - torch.nn.functional.cosine_similarity(out, ref, dim=-1)


@torch.no_grad()
def outputs(model: nn.Module, calib: Calibration) -> list[torch.Tensor]:
    return [model(**b).float() for b in calib.batches]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def fisher_importance(
    model: nn.Module,
    calib: Calibration,
    gate_sizes: list[int],
    install: Callable[[list[torch.Tensor]], list[Any]],
    probes: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Fisher importance of each gate element (see the module docstring). `install(gates)` registers
    the hooks that apply the gates and returns their handles."""
    gen = torch.Generator().manual_seed(seed)
    gates = [torch.ones(n, requires_grad=True) for n in gate_sizes]
    scores = [torch.zeros(n, dtype=torch.float64) for n in gate_sizes]
    with _frozen(model):
        handles = install(gates)
        try:
            for batch in calib.batches:
                out = model(**batch).float()
                for p in range(probes):
                    if calib.task == "classification":
                        probs = torch.softmax(out.detach(), dim=-1)
                        y = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                        loss = torch.log_softmax(out, dim=-1).gather(-1, y[:, None]).sum()
                    else:
                        unit = out / out.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                        u = unit.detach()
                        v = torch.randn(out.shape, generator=gen)
                        v = v - (v * u).sum(-1, keepdim=True) * u
                        loss = (v * unit).sum()
                    grads = torch.autograd.grad(loss, gates, retain_graph=p + 1 < probes)
                    for s, g in zip(scores, grads, strict=True):
                        s += g.double() ** 2
        finally:
            for h in handles:
                h.remove()
    total = probes * sum(len(b["input_ids"]) for b in calib.batches)
    return [s / total for s in scores]


def input_gate_hook(gate: torch.Tensor, repeat: int = 1) -> Callable:
    """Forward pre-hook for a Linear: scale its input features by `gate` (each gate value over `repeat` features)."""

    def hook(_module: nn.Module, args: tuple) -> tuple:
        scale = gate.repeat_interleave(repeat) if repeat > 1 else gate
        return (args[0] * scale,) + tuple(args[1:])

    return hook


def residual_gate_hook(gate: torch.Tensor) -> Callable:
    """Forward hook for a transformer layer: output = input + gate * (output - input)."""

    def hook(_module: nn.Module, args: tuple, output: Any) -> Any:
        x = args[0]
        if isinstance(output, tuple):
            return (x + gate * (output[0] - x),) + tuple(output[1:])
        return x + gate * (output - x)

    return hook


def layer_input_grams(
    model: nn.Module, calib: Calibration, linears: dict[int, nn.Module], budget_bytes: float = 256e6
) -> Iterator[tuple[int, torch.Tensor]]:
    """(key, Gram) per Linear in `linears`: the float64 Gram matrix of its input augmented with a constant 1,
    [x, 1]^T [x, 1], over the real (non-padding) tokens of the calibration texts. Computed a few layers per
    pass over the texts so memory stays within `budget_bytes` (BERT-base FFN grams are 75 MB each)."""
    keys = list(linears)
    start = 0
    while start < len(keys):
        chunk, used = [], 0.0
        while start < len(keys):
            size = 8.0 * (linears[keys[start]].in_features + 1) ** 2
            if chunk and used + size > budget_bytes:
                break
            chunk.append(keys[start])
            used += size
            start += 1
        yield from zip(chunk, _input_grams(model, calib, [linears[k] for k in chunk]), strict=True)


def _input_grams(model: nn.Module, calib: Calibration, linears: list[nn.Module]) -> list[torch.Tensor]:
    grams = [torch.zeros(m.in_features + 1, m.in_features + 1, dtype=torch.float64) for m in linears]
    state: dict[str, torch.Tensor] = {}

    def make(k: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            x = x[state["mask"]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            grams[k].add_((x.T @ x).double())  # one batch in fp32 (fast), the sum over batches in fp64

        return hook

    handles = [m.register_forward_pre_hook(make(k)) for k, m in enumerate(linears)]
    try:
        with torch.no_grad():
            for batch in calib.batches:
                state["mask"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return grams


def _augmented(linear: nn.Linear) -> torch.Tensor:
    """[W, b] in float64 (a zero bias column when the layer has none)."""
    bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros(linear.out_features, dtype=torch.float64)
    return torch.cat([linear.weight.detach().double(), bias[:, None]], dim=1)


def _regularised(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """Gram + ridge * mean input energy on the feature diagonal (never on the constant column)."""
    h = gram.clone()
    n = h.shape[0] - 1
    h[range(n), range(n)] += ridge * float(torch.diagonal(gram)[:n].mean().clamp(min=1e-12))
    return h


def obs_removal_order(
    linear: nn.Linear, gram: torch.Tensor, groups: list[list[int]] | None, n_remove: int, ridge: float, chunks: int = 64
) -> tuple[list[int], list[float]]:
    """Greedy Optimal-Brain-Surgeon removal of input features (or groups of them, e.g. a head's columns)
    of `linear`, on the layer-wise least-squares objective ||[x, 1] [W, b]^T - [x_kept, 1] [W', b']^T||^2
    over the calibration tokens: each step removes the group(s) whose removal, with the remaining weights
    optimally compensated, adds the least error (Hassibi & Stork 1993; Frantar & Alistarh 2022 for the
    layer-wise, structured form). Returns the removal order and each removal's added error as a fraction
    of the layer's output energy (comparable across layers)."""
    w = _augmented(linear)
    h = _regularised(gram, ridge)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    energy = float(torch.einsum("oi,ij,oj->", w, h, w).clamp(min=1e-30))
    n_groups = linear.in_features if groups is None else len(groups)
    index = [torch.tensor([g]) for g in range(n_groups)] if groups is None else [torch.tensor(g) for g in groups]
    alive = torch.ones(n_groups, dtype=torch.bool)
    order: list[int] = []
    costs: list[float] = []
    step = max(1, n_remove // chunks)
    while len(order) < n_remove:
        if groups is None:
            errs = (w[:, :-1] ** 2).sum(0) / torch.diagonal(hinv)[:-1].clamp(min=1e-30)
        else:
            errs = torch.stack([torch.trace(w[:, s] @ torch.linalg.solve(hinv[s][:, s], w[:, s].T)) for s in index])
        errs = errs.masked_fill(~alive, float("inf"))
        take = torch.argsort(errs)[: min(step, n_remove - len(order))].tolist()
        cols = torch.cat([index[g] for g in take])
        inv_ss = torch.linalg.inv(hinv[cols][:, cols])
        rows = hinv[cols, :]  # a copy: the in-place updates below read it
        w.addmm_(w[:, cols] @ inv_ss, rows, alpha=-1.0)
        hinv.addmm_(hinv[:, cols] @ inv_ss, rows, alpha=-1.0)
        w[:, cols] = 0.0
        for g in take:
            alive[g] = False
            order.append(g)
            costs.append(float(errs[g]) / energy)
    return order, costs


def refit_input_pruned(linear: nn.Linear, keep: torch.Tensor, gram: torch.Tensor, ridge: float = 1e-2) -> nn.Linear:
    """A Linear on the kept input features only, refitted by (ridge) least squares so that on the
    calibration inputs it reproduces the original layer's output: min ||[x_k, 1] [W', b']^T - (W x + b)||^2.
    Needs only the input Gram matrix: the normal equations are G_kk [W', b']^T = G_k,all [W, b]^T."""
    idx = torch.cat([keep.long(), torch.tensor([linear.in_features])])
    h = _regularised(gram, ridge)
    sol = torch.linalg.solve(h[idx][:, idx], gram[idx] @ _augmented(linear).T)
    out = nn.Linear(len(keep), linear.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(sol[:-1].T.to(linear.weight.dtype))
        out.bias.copy_(sol[-1].to(linear.weight.dtype))
    return out.train(linear.training)
