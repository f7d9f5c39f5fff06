"""Students for distillation.

- `layers`: the teacher with layers dropped, each kept layer initialised from the teacher layer it is mapped to
  (PKD / DistilBERT initialisation). It stays an HF encoder, so every other pass, `save_pretrained` and the
  converters handle it as they handle the teacher.
- `cnn` / `bilstm`: model-agnostic small encoders over the teacher's tokenizer (same `input_ids`), with the
  word embeddings initialised from a PCA projection of the teacher's, so they start with the teacher's
  lexical geometry. Both honour the forward contract (`input_ids`, `attention_mask` -> embedding or logits)
  and are written so padding never changes the output: the same numbers come out of a trimmed training batch
  and the static, padded exported graph. The BiLSTM reads each sequence backwards by an index gather over its
  real length instead of a packed sequence (packing does not export).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.passes._saliency import find_encoder


def resolve_mapping(n_teacher: int, layers: int | None, mapping: list[int] | None, init: str) -> list[int]:
    """Teacher layer each student layer is initialised from and supervised by (0-based, increasing)."""
    if mapping is not None:
        bad = [i for i in mapping if not 0 <= i < n_teacher]
        if bad:
            raise UserError(f"distill: mapping layer {bad[0]} is out of range; the teacher has layers 0..{n_teacher - 1}")
        if len(set(mapping)) != len(mapping) or list(mapping) != sorted(mapping):
            raise UserError(f"distill: mapping {list(mapping)} must list distinct teacher layers in increasing order, e.g. mapping=1,3,5")
        if layers is not None and layers != len(mapping):
            raise UserError(f"distill: layers={layers} but the mapping names {len(mapping)} layers; give one of them")
        return list(mapping)
    k = 3 if layers is None else layers
    if not 1 <= k <= n_teacher:
        raise UserError(f"distill: layers={k} is out of range; the teacher has {n_teacher} layers, choose 1..{n_teacher}")
    if init == "first":
        return list(range(k))
    if init == "last":
        return list(range(n_teacher - k, n_teacher))
    return [(i + 1) * n_teacher // k - 1 for i in range(k)]  # skip: every (n/k)-th layer, ending with the last


def layer_student(teacher_module: nn.Module, mapping: list[int]) -> nn.Module:
    """A copy of the teacher keeping only the layers in `mapping` (its weights start as those layers')."""
    student = copy.deepcopy(teacher_module)
    find_encoder(student).set_layers(mapping)
    return student


def pca_embeddings(teacher_module: nn.Module, dim: int) -> torch.Tensor:
    """Teacher word embeddings projected on their top-`dim` principal directions (rows keep their geometry)."""
    w = find_encoder(teacher_module).base.embeddings.word_embeddings.weight.detach().float()
    centred = w - w.mean(0, keepdim=True)
    if dim >= w.shape[1]:
        extra = torch.randn(w.shape[0], dim - w.shape[1]) * centred.std() * 0.1
        return torch.cat([centred, extra], dim=1)
    _, vecs = torch.linalg.eigh(centred.T @ centred)
    return centred @ vecs[:, -dim:].flip(-1)


class _Head(nn.Module):
    """Masked mean pooling -> linear -> (L2 normalise): the part every small student shares."""

    def __init__(self, width: int, out_dim: int, normalize: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(width, out_dim)
        self.normalize = normalize

    def forward(self, states: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        pooled = (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        out = self.proj(pooled)
        if self.normalize:
            out = out / out.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
        return out


class ConvStudent(nn.Module):
    """Embedding -> residual 1-D convolutions (GELU, LayerNorm) -> masked mean pooling -> linear."""

    def __init__(self, embeddings: torch.Tensor, layers: int, kernel: int, out_dim: int, normalize: bool) -> None:
        super().__init__()
        vocab, dim = embeddings.shape
        self.embed = nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.embed.weight.copy_(embeddings)
        self.convs = nn.ModuleList([nn.Conv1d(dim, dim, kernel, padding=kernel // 2) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])
        self.act = nn.GELU()
        self.head = _Head(dim, out_dim, normalize)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        x = self.embed(input_ids.long()) * m
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = conv(x.transpose(1, 2)).transpose(1, 2)
            x = norm(x + self.act(h)) * m  # re-masking keeps padding at zero, so it never leaks into real tokens
        return self.head(x, m)


class BiLSTMStudent(nn.Module):
    """Embedding -> forward LSTM and a backward LSTM over each sequence's real tokens -> masked mean pooling -> linear."""

    def __init__(self, embeddings: torch.Tensor, hidden: int, out_dim: int, normalize: bool) -> None:
        super().__init__()
        vocab, dim = embeddings.shape
        self.embed = nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.embed.weight.copy_(embeddings)
        self.fwd = nn.LSTM(dim, hidden, batch_first=True)
        self.bwd = nn.LSTM(dim, hidden, batch_first=True)
        self.head = _Head(2 * hidden, out_dim, normalize)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        mask = attention_mask.long()
        m = mask.unsqueeze(-1).float()
        x = self.embed(input_ids.long()) * m
        steps = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        length = mask.sum(dim=1, keepdim=True)
        # position t of the reversed sequence reads real token (length - 1 - t); padding stays in place (self-inverse)
        rev = torch.where(steps < length, length - 1 - steps, steps).unsqueeze(-1)
        h_f, _ = self.fwd(x)
        h_b, _ = self.bwd(torch.gather(x, 1, rev.expand(-1, -1, x.shape[-1])))
        h_b = torch.gather(h_b, 1, rev.expand(-1, -1, h_b.shape[-1]))
        return self.head(torch.cat([h_f, h_b], dim=-1) * m, m)
