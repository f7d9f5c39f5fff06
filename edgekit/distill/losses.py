"""Distillation losses between a student and the teacher, each a scalar to minimise.

- output: embeddings -> 1 - cosine (the quantity fidelity is measured in) or MSE; logits -> KL(teacher || student)
  at temperature T, scaled by T^2 so its gradient scale does not shrink with T (Hinton et al. 2015).
- hidden: PKD/TinyBERT-style MSE between the token states of student layer i and teacher layer mapping[i],
  over real (non-padding) tokens, divided by the teacher states' mean square so the weight means the same
  for every model width.
- attention: MiniLM/TinyBERT attention distributions, KL(teacher || student) over keys, averaged over heads
  and real query tokens, plus MiniLM's value relation (softmax(V V^T / sqrt(d)) per head, same KL). Both are
  computed from captured q/k/v projections, so they work for BERT and DistilBERT alike and need no
  `output_attentions` plumbing. Relations are split into the teacher's head count, so a student with
  pruned heads still compares (MiniLM-v2's relation heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: additive mask for padding keys; large but finite so fully-masked rows stay finite
_NEG = -1e4


def output_loss(student: torch.Tensor, teacher: torch.Tensor, task: str, kind: str = "cosine", temperature: float = 2.0) -> torch.Tensor:
    """Loss between final outputs: cosine/MSE for embeddings, temperature KL for logits."""
    if task == "classification":
        t = temperature
        log_p_t = F.log_softmax(teacher / t, dim=-1)
        log_p_s = F.log_softmax(student / t, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def hidden_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over layer pairs of the masked token-state MSE, relative to the teacher states' mean square."""
    m = mask.unsqueeze(-1).to(student_states[0].dtype)
    n = m.sum().clamp(min=1.0) * student_states[0].shape[-1]
    total = student_states[0].new_zeros(())
    for s, t in zip(student_states, teacher_states, strict=True):
        err = (((s - t) ** 2) * m).sum() / n
        scale = ((t**2) * m).sum() / n
        total = total + err / scale.clamp(min=1e-12).detach()
    return total / len(student_states)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*d] -> [B, H, L, d]."""
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads).transpose(1, 2)


def _relation_logits(a: torch.Tensor, b: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot products a b^T per head with padding keys masked: [B, H, L, L]."""
    ah, bh = _heads(a, heads), _heads(b, heads)
    scores = ah @ bh.transpose(-1, -2) / math.sqrt(ah.shape[-1])
    return scores + (1.0 - mask[:, None, None, :].to(scores.dtype)) * _NEG


def _masked_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax t || softmax s) over the last axis, averaged over heads and real query rows."""
    log_t = F.log_softmax(t_logits, dim=-1)
    log_s = F.log_softmax(s_logits, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, H, L]
    q = mask[:, None, :].to(kl.dtype)
    return (kl * q).sum() / (q.sum() * kl.shape[1]).clamp(min=1.0)


def attention_loss(
    student_qk: list[tuple[torch.Tensor, torch.Tensor]], teacher_qk: list[tuple[torch.Tensor, torch.Tensor]], heads: int, mask: torch.Tensor
) -> torch.Tensor:
    """MiniLM/TinyBERT attention-distribution KL for each (student, teacher) layer pair, averaged."""
    total = student_qk[0][0].new_zeros(())
    for (sq, sk), (tq, tk) in zip(student_qk, teacher_qk, strict=True):
        total = total + _masked_kl(_relation_logits(tq, tk, heads, mask), _relation_logits(sq, sk, heads, mask), mask)
    return total / len(student_qk)


def value_relation_loss(student_v: list[torch.Tensor], teacher_v: list[torch.Tensor], heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM value-relation KL: softmax(V V^T / sqrt(d)) of student vs teacher, per layer pair, averaged."""
    total = student_v[0].new_zeros(())
    for sv, tv in zip(student_v, teacher_v, strict=True):
        total = total + _masked_kl(_relation_logits(tv, tv, heads, mask), _relation_logits(sv, sv, heads, mask), mask)
    return total / len(student_v)
