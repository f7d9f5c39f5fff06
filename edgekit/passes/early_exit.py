"""`early-exit`: exit heads after chosen layers, trained by self-distillation, with a calibrated exit criterion.

Recipe: `early-exit:layers=2,4` (criterion: learned confidence for embedding models, normalised
entropy for classifiers; threshold calibrated on held-out texts for `target` fidelity) or with an
explicit `threshold=0.9` / `criterion=max-prob|entropy|patience`.

Training is self-distillation against the model's own final output with the backbone frozen, so
the full-depth path stays bit-identical to the teacher and the heads train on cached
intermediate states in seconds on a CPU: embedding heads minimise 1 - cosine to the final
embedding and their confidence head regresses the cosine it achieves; classifier heads minimise
KL to the final logits. The texts are split: heads train on one part and the threshold is
calibrated (and the effect recorded) on the held-out rest.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from edgekit.dynamic import CLASSIFIER_CRITERIA, EMBEDDING_CRITERIA, EarlyExitModel, decide, initial_state
from edgekit.errors import UserError
from edgekit.model import pool
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass


class EarlyExitConfig(PassConfig):
    layers: list[int] = Field(description="exit after these layers (1-based counts), e.g. [2, 4]")
    criterion: Literal["confidence", "entropy", "max-prob", "patience"] | None = None
    threshold: float | None = Field(None, description="fixed threshold; default: calibrated for `target`")
    target: float = Field(0.99, gt=0, le=1, description="held-out fidelity the calibrated threshold must keep")
    steps: int = Field(400, ge=1, le=100_000)
    lr: float = Field(3e-3, gt=0)
    holdout: float = Field(0.3, gt=0, lt=1, description="fraction of texts held out for calibration")
    augment: int = Field(4, ge=0, le=50, description="random word-span crops added per training text")
    seed: int = 0

    @field_validator("layers", mode="before")
    @classmethod
    def _as_list(cls, v):
        return v if isinstance(v, list) else [v]


@register_pass
class EarlyExit(Pass):
    name = "early-exit"
    Config = EarlyExitConfig
    primary_option = "layers"
    control_flow = True

    def __init__(self, config: EarlyExitConfig) -> None:
        super().__init__(config)
        if len(set(config.layers)) != len(config.layers):
            raise UserError(f"early-exit: layers {config.layers} repeat a layer; give each exit layer once")
        if config.criterion == "patience" and config.threshold is not None and config.threshold < 1:
            raise UserError("early-exit: patience threshold is a count of agreeing exits; use threshold=1 or more")

    def check_order(self, before: list[str], after: list[str]) -> None:
        """Dynamic models are not Hugging Face encoders any more: every other pass must run before this one."""
        others = [n for n in after if n in ("early-exit", "token-skip")]
        if others:
            raise UserError(f"early-exit and {others[0]} cannot be combined in one recipe yet; keep one of them")
        if after:
            raise UserError(f"{after[0]} cannot follow early-exit: put early-exit last in the recipe, e.g. {after[0]}+early-exit:...")

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        cfg = self.config
        task = "embedding" if hasattr(model, "pooling") else "classification"
        criterion = cfg.criterion or ("confidence" if task == "embedding" else "entropy")
        allowed = EMBEDDING_CRITERIA if task == "embedding" else CLASSIFIER_CRITERIA
        if criterion not in allowed:
            raise UserError(f"early-exit: criterion '{criterion}' does not apply to a {task} model; use one of {', '.join(allowed)}")
        ee = EarlyExitModel(model, cfg.layers, criterion, threshold=cfg.threshold if cfg.threshold is not None else 1.0)
        n_layers = ee.num_layers
        bad = [x for x in cfg.layers if not 1 <= x < n_layers]
        if bad:
            raise UserError(
                f"early-exit: exit layer(s) {bad} out of range; this model has {n_layers} layers, exits go after layers 1..{n_layers - 1}"
            )
        if criterion == "patience" and len(cfg.layers) < 2:
            raise UserError("early-exit: patience needs at least two exits to compare, e.g. layers=2,4")
        if len(ctx.texts) < 10:
            raise UserError(
                f"early-exit: {len(ctx.texts)} texts are too few to train exit heads; pass --texts or --calibration-texts with at least 10"
            )
        started = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(ctx.texts))
        n_hold = max(2, int(round(cfg.holdout * len(order))))
        train_idx, hold_idx = order[n_hold:], order[:n_hold]
        train_texts = augment([ctx.texts[i] for i in train_idx], cfg.augment, rng)
        train = _collect(ee, ctx.teacher, train_texts, ctx.seq_len)
        hold = _collect(ee, ctx.teacher, [ctx.texts[i] for i in hold_idx], ctx.seq_len)
        torch.manual_seed(cfg.seed)
        losses = _train_heads(ee, train, cfg.steps, cfg.lr, cfg.seed)
        per_exit = _exit_outputs(ee, hold)
        if cfg.threshold is not None:
            threshold = cfg.threshold
        else:
            threshold = _calibrate(ee, per_exit, hold["final"], cfg.target)
        ee.threshold.fill_(threshold)
        summary = _simulate(ee, per_exit, hold["final"], threshold)
        ctx.records.append(
            {
                "pass": self.name,
                "config": cfg.model_dump(),
                "criterion": criterion,
                "threshold": threshold,
                "threshold_source": "recipe" if cfg.threshold is not None else f"calibrated on held-out texts for fidelity >= {cfg.target}",
                "train_texts": len(train_idx),
                "heldout_texts": len(hold_idx),
                "train_examples": len(train_texts),
                "training": "ridge projection + confidence regression (out-of-fold cosines)"
                if ee.task == "embedding"
                else f"AdamW on KL to the final logits, {cfg.steps} steps, final loss {losses[-1]:.4f}",
                "heldout_exit_fidelity": {f"layer {layer}": f for layer, f in zip(ee.exits, summary["exit_fidelity"], strict=True)},
                "heldout_exit_rate": summary["exit_rate"],
                "heldout_fidelity": summary["fidelity"],
                "heldout_mean_layers": summary["mean_layers"],
                "seconds": round(time.perf_counter() - started, 1),
                "note": "backbone frozen: the full-depth path is the teacher's",
            }
        )
        return ee.eval()


def augment(texts: list[str], copies: int, rng: np.random.Generator) -> list[str]:
    """The texts plus `copies` random word spans of each (at least 3 words): more (state, output) pairs
    for the heads to learn from without new data, all from the training split."""
    out = list(texts)
    for text in texts:
        words = text.split()
        if len(words) < 4:
            continue
        for _ in range(copies):
            n = int(rng.integers(3, len(words) + 1))
            start = int(rng.integers(0, len(words) - n + 1))
            out.append(" ".join(words[start : start + n]))
    return out


@torch.no_grad()
def _collect(ee: EarlyExitModel, teacher, texts: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Per text: the head inputs at every exit (pooled states, or the first token) and the final output.

    Batches are padded to their longest text (not to `seq_len`): outputs are the same, since
    pooling and attention ignore padding, and short texts cost far less.
    """
    st = ee.stages
    keys: dict[str, list[torch.Tensor]] = {"final": []} | {f"exit{j}": [] for j in range(len(ee.exits))}
    for b in range(0, len(texts), 32):
        enc = teacher.tokenizer(texts[b : b + 32], padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
        mask = enc["attention_mask"]
        hidden = st.embed(enc["input_ids"], enc.get("token_type_ids") if st.use_token_type_ids else None)
        bias = st.attention_bias(mask)
        for i in range(st.num_layers):
            hidden = st.layer(i, hidden, bias)
            if i + 1 in ee.exits:
                j = ee.exits.index(i + 1)
                if ee.task == "embedding":
                    keys[f"exit{j}"].append(pool(hidden, mask, ee.heads[j].pooling))
                else:
                    keys[f"exit{j}"].append(hidden[:, :1].clone())
        keys["final"].append(st.head(hidden, mask))
    return {k: torch.cat(v) for k, v in keys.items()}


def _head_out(ee: EarlyExitModel, j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    head = ee.heads[j]
    if ee.task == "embedding":
        return head.from_pooled(x)
    return head(x, torch.ones(x.shape[:2], dtype=torch.long))


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ~ x W + b with an L2 penalty on W (float64 normal equations)."""
    x64, y64 = x.double(), y.double()
    mx, my = x64.mean(0), y64.mean(0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc
    w = torch.linalg.solve(gram + lam * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64), xc.T @ yc)
    return w.float(), (my - mx @ w).float()


@torch.no_grad()
def _fit_embedding_head(head, x: torch.Tensor, final: torch.Tensor, seed: int) -> float:
    """Fit the projection by ridge regression (penalty picked on a validation fold), then the confidence
    head on cosines the projection reaches on texts it was *not* fitted on (in-sample cosines are optimistic)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    folds = perm.chunk(4)
    best_lam, best_cos = 1.0, -2.0
    for lam in (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0):
        val, fit = folds[0], torch.cat(folds[1:])
        w, b = _ridge(x[fit], final[fit], lam)
        cos = torch.nn.functional.cosine_similarity(x[val] @ w + b, final[val], dim=-1).mean()
        if cos > best_cos:
            best_lam, best_cos = lam, float(cos)
    oof = torch.empty(len(x))
    for k, val in enumerate(folds):
        fit = torch.cat([f for i, f in enumerate(folds) if i != k])
        w, b = _ridge(x[fit], final[fit], best_lam)
        oof[val] = torch.nn.functional.cosine_similarity(x[val] @ w + b, final[val], dim=-1)
    w, b = _ridge(x, final, best_lam)
    head.proj.weight.copy_(w.T)
    head.proj.bias.copy_(b)
    # confidence: sigmoid(linear(LayerNorm(pooled))) regresses the out-of-fold cosine (fit in logit space)
    feats = head.norm(x)
    target = torch.logit(oof.clamp(0.02, 0.995))
    cw, cb = _ridge(feats, target[:, None], 0.3)
    head.confidence.weight.copy_(cw.T)
    head.confidence.bias.copy_(cb)
    return float(oof.mean())


def _train_heads(ee: EarlyExitModel, data: dict[str, torch.Tensor], steps: int, lr: float, seed: int) -> list[float]:
    """Embedding heads: closed-form fits (returns each head's out-of-fold cosine). Classifier heads: KL by AdamW."""
    final = data["final"]
    if ee.task == "embedding":
        return [_fit_embedding_head(ee.heads[j], data[f"exit{j}"], final, seed) for j in range(len(ee.exits))]
    params = [p for h in ee.heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    losses = []
    ee.heads.train()
    target = F.softmax(final, -1)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.zeros(())
        for j in range(len(ee.exits)):
            out, _ = _head_out(ee, j, data[f"exit{j}"])
            loss = loss + F.kl_div(F.log_softmax(out, -1), target, reduction="batchmean")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    ee.heads.eval()
    return losses


@torch.no_grad()
def _exit_outputs(ee: EarlyExitModel, data: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_head_out(ee, j, data[f"exit{j}"]) for j in range(len(ee.exits))]


def _agreement(task: str, out: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Per-text fidelity of an output vs the final one: cosine (embeddings) or top-1 match (logits)."""
    if task == "embedding":
        return F.cosine_similarity(out, final, dim=-1)
    return (out.argmax(-1) == final.argmax(-1)).to(torch.float32)


@torch.no_grad()
def _simulate(ee: EarlyExitModel, per_exit, final: torch.Tensor, threshold: float) -> dict:
    """Replay the exit decisions text by text (the same `decide` the graphs run) on cached head outputs."""
    thr = torch.tensor([threshold])
    n = len(final)
    chosen = torch.full((n,), -1, dtype=torch.long)
    fid = torch.empty(n)
    for t in range(n):
        state = initial_state()
        for j, (out, conf) in enumerate(per_exit):
            flag, state = decide(ee.criterion, out[t : t + 1], conf[t : t + 1], thr, state)
            if bool(flag):
                chosen[t] = j
                fid[t] = _agreement(ee.task, out[t : t + 1], final[t : t + 1])[0]
                break
        else:
            fid[t] = 1.0
    layers = [ee.exits[j] if j >= 0 else ee.num_layers for j in chosen.tolist()]
    return {
        "exit_fidelity": [round(float(_agreement(ee.task, out, final).mean()), 5) for out, _ in per_exit],
        "exit_rate": {f"layer {x}": round(float((chosen == j).float().mean()), 4) for j, x in enumerate(ee.exits)}
        | {f"layer {ee.num_layers} (full)": round(float((chosen < 0).float().mean()), 4)},
        "fidelity": round(float(fid.mean()), 5),
        "mean_layers": round(float(np.mean(layers)), 3),
    }


def _calibrate(ee: EarlyExitModel, per_exit, final: torch.Tensor, target: float) -> float:
    """The threshold that exits most often while held-out fidelity stays >= target."""
    if ee.criterion == "patience":
        candidates = [float(k) for k in range(1, len(ee.exits) + 1)]
        best = float(len(ee.exits) + 1)  # never exits
        for k in sorted(candidates, reverse=True):
            if _simulate(ee, per_exit, final, k)["fidelity"] >= target:
                best = k
        return best
    grid = np.linspace(0.0, 1.0, 201)
    # exits more often as the threshold falls (confidence, max-prob) or rises (entropy)
    ordered = grid if ee.criterion != "entropy" else grid[::-1]
    never = 1.01 if ee.criterion != "entropy" else 0.0
    for thr in ordered:
        if _simulate(ee, per_exit, final, float(thr))["fidelity"] >= target:
            return round(float(thr), 4)
    return never
