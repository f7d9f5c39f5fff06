"""`prune-weights`: unstructured magnitude pruning of the encoder's Linear weights.

Recipe: `prune-weights:0.5` (50% of the weights of every attention and FFN Linear set to zero,
ranked globally by |w|) or `prune-weights:sparsity=0.5,scope=layer` (50% inside each Linear).
Embedding tables and the heads are left dense (`targets=all` includes the embedding tables too).

What it buys depends on the format, and the report says which: ONNX and TFLite store the zeros
densely (same file size; a zip of the bundle shrinks), while Core ML stores weights with enough
zeros as a sparse bitmask + non-zero values (`coremltools.optimize` representation, lossless for
exact zeros). No format runs faster from unstructured zeros on a phone CPU; structured passes
(`prune-ffn`, `prune-heads`, `prune-layers`) are what remove work. `schedule=gradual` is not
offered here: gradual pruning only makes sense inside training (the distillation pass).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.passes._saliency import ATTENTION_ROLES, FFN_ROLES, find_encoder
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass


class PruneWeightsConfig(PassConfig):
    sparsity: float = Field(gt=0, lt=1, description="fraction of the targeted weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="rank |w| across all targets, or within each Linear")
    targets: Literal["encoder", "all"] = Field("encoder", description="encoder Linears, or also the embedding tables")


def sparsity_of(module: nn.Module) -> float:
    """Fraction of exact zeros over all floating-point weights of a module (biases and norms included)."""
    zeros = total = 0
    for p in module.parameters():
        if p.is_floating_point():
            zeros += int((p == 0).sum())
            total += p.numel()
    return zeros / max(total, 1)


@register_pass
class PruneWeights(Pass):
    name = "prune-weights"
    Config = PruneWeightsConfig
    primary_option = "sparsity"

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        cfg = self.config
        enc = find_encoder(model)
        weights: list[tuple[str, torch.Tensor]] = [
            (f"layer {i} {role}", enc.linear(i, role, self.name).weight) for i, role in enc.linears(ATTENTION_ROLES + FFN_ROLES)
        ]
        if cfg.targets == "all":
            weights += [(name, m.weight) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
        if cfg.scope == "global":
            magnitudes = torch.cat([w.abs().flatten() for _, w in weights])
            k = int(cfg.sparsity * magnitudes.numel())
            # kthvalue on float32 avoids the fp16 percentile overflow DESIGN.md warns about
            cut = float(torch.kthvalue(magnitudes.float(), max(k, 1)).values) if k else -1.0
            cuts = [cut] * len(weights)
        else:
            cuts = []
            for _, w in weights:
                k = int(cfg.sparsity * w.numel())
                cuts.append(float(torch.kthvalue(w.abs().flatten().float(), max(k, 1)).values) if k else -1.0)
        per_tensor = {}
        zeroed = total = 0
        for (name, w), cut in zip(weights, cuts, strict=True):
            mask = w.abs() <= cut
            w[mask] = 0.0
            zeroed += int(mask.sum())
            total += w.numel()
            per_tensor[name] = round(float(mask.float().mean()), 4)
        ctx.records.append(
            {
                "pass": self.name,
                "config": cfg.model_dump(),
                "targeted_weights": total,
                "zeroed_weights": zeroed,
                "targeted_sparsity": round(zeroed / max(total, 1), 4),
                "model_sparsity": round(sparsity_of(model), 4),
                "sparsity_per_tensor": per_tensor,
                "notes": [
                    "unstructured zeros: ONNX and TFLite store them densely (no size or speed change on their own); "
                    "Core ML stores sparse weights; see each artifact's notes",
                ],
            }
        )
        return model
