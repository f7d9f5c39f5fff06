"""`share-layers`: ALBERT-style cross-layer weight sharing — several layer positions run ONE layer's weights.

Recipe: `share-layers:2` (consecutive groups of 2: positions 0-1, 2-3, 4-5 each share one layer) or
`share-layers:map=0,0,0,3,3,3` (position i runs the weights of layer map[i]; every map[i] must be a
position whose own entry is itself). Depth and compute are unchanged; the stored weights shrink.

Which layer of a group serves the whole group (`source=measured`, the default): each candidate is
tried in every position of its group, and the one that moves the output least on the sample texts
wins (measured, like `prune-layers`' output saliency); `source=first` takes the group's first layer.
No fine-tuning happens here: without it the output moves (see bench/passes.py); distillation is
what recovers it.

In torch the positions hold the same module, so parameters exist once. The exporters keep them once:
ONNX deduplicates identical initializers after fusion and quantization (`dedupe_initializers`), and
Core ML stores one constant per torch parameter; the artifact sizes in bench/passes.py show it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.errors import UserError
from edgekit.passes._saliency import add_record, calibration, count_params, find_encoder, output_distance, outputs
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass


class ShareLayersConfig(PassConfig):
    every: int | None = Field(None, ge=1, description="share weights within consecutive groups of this many layers")
    map: list[int] | None = Field(None, description="position i runs the weights of layer map[i]")
    source: Literal["measured", "first"] = "measured"
    samples: int = Field(64, ge=1, description="sample texts used to choose each group's layer (source=measured)")


def groups_from(cfg: ShareLayersConfig, n: int) -> list[list[int]]:
    """Positions grouped by the layer they will share; explicit maps are validated here (one-line errors)."""
    if (cfg.every is None) == (cfg.map is None):
        raise UserError("share-layers needs exactly one of every=<group size> or map=<layer per position>, e.g. share-layers:2")
    if cfg.every is not None:
        if cfg.every > n:
            raise UserError(f"share-layers: every={cfg.every} but the model has {n} layers; choose 2..{n}")
        return [list(range(start, min(start + cfg.every, n))) for start in range(0, n, cfg.every)]
    mapping = [cfg.map] if isinstance(cfg.map, int) else list(cfg.map)
    if len(mapping) != n:
        raise UserError(f"share-layers: map has {len(mapping)} entries but the model has {n} layers; give one layer index per position")
    bad = [m for m in mapping if not 0 <= m < n]
    if bad:
        raise UserError(f"share-layers: map names layer {bad[0]}, out of range 0..{n - 1}")
    not_self = sorted({m for m in mapping if mapping[m] != m})
    if not_self:
        raise UserError(f"share-layers: map points at layer {not_self[0]}, whose own position runs another layer; map it to itself")
    groups: dict[int, list[int]] = {}
    for position, source in enumerate(mapping):
        groups.setdefault(source, []).append(position)
    return [sorted(g) for g in groups.values()]


@register_pass
class ShareLayers(Pass):
    """Cross-layer parameter sharing (ALBERT): fewer stored layers, same depth."""

    name = "share-layers"
    Config = ShareLayersConfig
    primary_option: ClassVar[str] = "every"

    def __init__(self, config: ShareLayersConfig) -> None:
        super().__init__(config)
        if (config.every is None) == (config.map is None):  # fail at recipe parse time, before minutes of other passes
            raise UserError("share-layers needs exactly one of every=<group size> or map=<layer per position>, e.g. share-layers:2")

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        cfg: ShareLayersConfig = self.config
        enc = find_encoder(model)
        n = len(enc)
        groups = groups_from(cfg, n)
        layers = list(enc.layers)
        if len({id(m) for m in layers}) < n:
            raise UserError("share-layers: this model already shares layers; run share-layers once")
        before = count_params(model)
        chosen: dict[int, int] = {}
        costs: dict[str, float] = {}
        explicit = cfg.map is not None
        calib = None
        if cfg.source == "measured" and not explicit and any(len(g) > 1 for g in groups):
            calib = calibration(model, ctx, cfg.samples, self.name)
            reference = outputs(model, calib)
        for group in groups:
            if explicit:
                source = (cfg.map if isinstance(cfg.map, list) else [cfg.map])[group[0]]
            elif len(group) == 1 or calib is None:
                source = group[0]
            else:
                best = None
                for candidate in group:
                    with enc.only_layers([candidate if i in group else i for i in range(n)]):
                        got = outputs(model, calib)
                    cost = float(torch.cat([output_distance(o, r, calib.task) for o, r in zip(got, reference, strict=True)]).mean())
                    costs[f"{group}:{candidate}"] = cost
                    if best is None or cost < best[0]:
                        best = (cost, candidate)
                source = best[1]
            for position in group:
                chosen[position] = source
        enc.set_layers([chosen[i] for i in range(n)])  # the same module at every position of a group
        shared = [g for g in groups if len(g) > 1]
        details: dict[str, Any] = {
            "layer_per_position": [chosen[i] for i in range(n)],
            "groups": groups,
            "source": "explicit" if explicit else cfg.source,
            "stored_layers": len(set(chosen.values())),
        }
        if costs:
            details["output_distance_per_candidate"] = costs
        notes = [] if shared else ["no two positions share a layer: nothing changed"]
        add_record(ctx, self.name, cfg, before, count_params(model), details, notes)
        return model
