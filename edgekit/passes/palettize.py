"""`palettize`: k-means weight clustering (weight sharing) — every weight becomes one of 2^bits values.

Recipe: `palettize:4` (16 values per tensor, all encoder Linears) or `palettize:bits=4,granularity=group,group_size=16`
(a codebook per group of 16 output channels), `targets=all` to include the embedding tables.

Clustering is 1-D k-means (Lloyd) per tensor or per channel group, initialised at quantiles of the
weights. The torch model keeps dense weights holding only codebook values, so every format gets a
model it can lower, and the report says how each stores it: Core ML lowers it natively as a
palettized (look-up table + n-bit indices) constant — per-tensor tables from iOS16, per-group
tables need iOS18; ONNX and TFLite have no look-up-table weights, so they store the dequantized
values densely (the artifact notes give the measured deflate-compressed size).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.passes._saliency import ATTENTION_ROLES, FFN_ROLES, find_encoder
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass


class PalettizeConfig(PassConfig):
    bits: int = Field(ge=1, le=8, description="bits per weight index: 2^bits shared values per table")
    granularity: Literal["tensor", "group"] = "tensor"
    group_size: int = Field(16, ge=1, description="output channels sharing one table (granularity=group)")
    targets: Literal["encoder", "all"] = "encoder"
    iterations: int = Field(20, ge=1, le=200)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [k'], assignment of every value) by Lloyd's algorithm; k' <= k when values repeat."""
    flat = values.flatten().float()
    uniq = torch.unique(flat)
    if uniq.numel() <= k:
        return uniq, torch.bucketize(flat, uniq)
    # fit on a fixed subsample (deterministic): 2^18 values pin 2^8 centroids well; then assign every value
    gen = torch.Generator().manual_seed(0)
    fit = flat if flat.numel() <= 2**18 else flat[torch.randperm(flat.numel(), generator=gen)[: 2**18]]
    qs = torch.linspace(0, 1, k, dtype=torch.float32)
    centroids = torch.unique(torch.quantile(fit, qs))
    for _ in range(iterations):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        assign = torch.bucketize(fit, bounds)
        sums = torch.zeros_like(centroids).index_add_(0, assign, fit)
        counts = torch.zeros_like(centroids).index_add_(0, assign, torch.ones_like(fit))
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = torch.sort(updated).values
    assign = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, assign


@register_pass
class Palettize(Pass):
    name = "palettize"
    Config = PalettizeConfig
    primary_option = "bits"

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        cfg = self.config
        enc = find_encoder(model)
        weights = [(f"layer {i} {role}", enc.linear(i, role, self.name).weight) for i, role in enc.linears(ATTENTION_ROLES + FFN_ROLES)]
        if cfg.targets == "all":
            weights += [(name, m.weight) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
        k = 2**cfg.bits
        sq_err = sq_norm = 0.0
        tables = 0
        for _, w in weights:
            groups = [w] if cfg.granularity == "tensor" else list(torch.split(w, cfg.group_size, dim=0))
            for g in groups:
                centroids, assign = kmeans_1d(g, k, cfg.iterations)
                new = centroids[assign].reshape(g.shape).to(g.dtype)
                sq_err += float(((new - g) ** 2).sum())
                sq_norm += float((g**2).sum())
                g.copy_(new)
                tables += 1
        ctx.records.append(
            {
                "pass": self.name,
                "config": cfg.model_dump(),
                "tensors": len(weights),
                "codebooks": tables,
                "values_per_codebook": k,
                "relative_weight_error": round((sq_err / max(sq_norm, 1e-30)) ** 0.5, 5),
                "notes": [
                    "Core ML stores these as look-up tables + indices (per-group tables need iOS18); "
                    "ONNX and TFLite store the dequantized values densely",
                ],
            }
        )
        model.palettized_bits = cfg.bits  # read by the Core ML converter
        model.palettized_granularity = cfg.granularity
        return model
