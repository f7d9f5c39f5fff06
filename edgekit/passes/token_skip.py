"""`token-skip`: drop the least-attended tokens after chosen layers (PoWER-BERT fixed counts, LTP-style thresholds).

Recipe: `token-skip:keep=0.5@2` keeps ceil(0.5 x length) tokens after layer 2 (several:
`keep=0.5@2,0.25@4`); `token-skip:threshold=0.5@2` keeps tokens that receive at least 0.5 x the
mean attention (a dynamic count: ONNX only, refused for profiles whose formats need static shapes).
Saliency, padding and pooling rules: see `edgekit.dynamic.TokenSkipModel`. No training: the
ranking is the model's own attention, measured on the sample texts for the record.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from edgekit.dynamic import TokenSkipModel
from edgekit.errors import UserError
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass

#: formats whose artifacts have a static [1, seq_len] input shape
STATIC_SHAPE_FORMATS = ("tflite", "coreml")


def _parse_schedule(items: list, option: str, upper: float | None) -> dict[int, float]:
    """'0.5@2' items -> {2: 0.5}; one-line errors for anything else."""
    schedule: dict[int, float] = {}
    for item in items:
        text = str(item)
        value, at, layer = text.partition("@")
        try:
            v, layer_no = float(value), int(layer)
        except ValueError:
            raise UserError(f"token-skip: '{text}' is not VALUE@LAYER; write e.g. {option}=0.5@2") from None
        if not at:
            raise UserError(f"token-skip: '{text}' names no layer; write e.g. {option}=0.5@2")
        if v <= 0 or (upper is not None and v > upper):
            raise UserError(
                f"token-skip: {option} {v:g} must be in (0, {upper:g}]; e.g. {option}=0.5@2"
                if upper
                else f"token-skip: {option} must be > 0"
            )
        if layer_no in schedule:
            raise UserError(f"token-skip: layer {layer_no} appears twice in {option}; give each layer once")
        schedule[layer_no] = v
    return schedule


class TokenSkipConfig(PassConfig):
    keep: list[str] | None = Field(None, description="RATIO@LAYER items: keep this fraction of tokens after that layer")
    threshold: list[str] | None = Field(None, description="VALUE@LAYER items: keep tokens receiving >= VALUE x mean attention")

    @field_validator("keep", "threshold", mode="before")
    @classmethod
    def _as_list(cls, v):
        if v is None:
            return v
        return [str(x) for x in v] if isinstance(v, list) else [str(v)]


@register_pass
class TokenSkip(Pass):
    name = "token-skip"
    Config = TokenSkipConfig
    primary_option = "keep"

    def __init__(self, config: TokenSkipConfig) -> None:
        super().__init__(config)
        if (config.keep is None) == (config.threshold is None):
            raise UserError("token-skip: give either keep=RATIO@LAYER (static count) or threshold=VALUE@LAYER (dynamic), e.g. keep=0.5@2")
        self.mode = "keep" if config.keep is not None else "threshold"
        items = config.keep if config.keep is not None else config.threshold
        self.schedule = _parse_schedule(items or [], self.mode, 1.0 if self.mode == "keep" else None)

    def check_order(self, before: list[str], after: list[str]) -> None:
        """Dynamic models are not Hugging Face encoders any more: every other pass must run before this one."""
        others = [n for n in after if n in ("early-exit", "token-skip")]
        if others:
            raise UserError(f"token-skip and {others[0]} cannot be combined in one recipe yet; keep one of them")
        if after:
            raise UserError(f"{after[0]} cannot follow token-skip: put token-skip last in the recipe, e.g. {after[0]}+token-skip:...")

    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        skip = TokenSkipModel(model, self.schedule, self.mode)
        n_layers = skip.stages.num_layers
        bad = [x for x in self.schedule if not 1 <= x < n_layers]
        if bad:
            raise UserError(
                f"token-skip: layer(s) {bad} out of range; this model has {n_layers} layers, skip after layers 1..{n_layers - 1}"
            )
        static = [f for f in (getattr(ctx.profile, "formats", None) or []) if f in STATIC_SHAPE_FORMATS]
        if self.mode == "threshold" and static:
            raise UserError(
                f"token-skip: threshold mode keeps a dynamic number of tokens, but {ctx.profile.name} exports {', '.join(static)} "
                "with static shapes; use keep=RATIO@LAYER, or --formats onnx"
            )
        ctx.records.append(
            {"pass": self.name, "config": self.config.model_dump(), "mode": self.mode, "schedule": self.schedule}
            | _measure(model, skip, ctx)
        )
        return skip.eval()


@torch.no_grad()
def _measure(teacher: nn.Module, skip: TokenSkipModel, ctx: PassContext, limit: int = 64) -> dict:
    """Fidelity of the torch model on the first texts, and how many real tokens each schedule step keeps."""
    texts = ctx.texts[:limit]
    if not texts:
        return {}
    inputs = ctx.teacher.tokenize(texts, ctx.seq_len)
    outs, refs, kept_real = [], [], []
    for i in range(len(texts)):
        row = {k: torch.from_numpy(v[i : i + 1]) for k, v in inputs.items()}
        refs.append(teacher(**row))
        outs.append(skip(**row))
        real = int(row["attention_mask"].sum())
        if skip.mode == "keep":
            k = ctx.seq_len
            for ratio in skip.schedule.values():
                k = max(1, math.ceil(ratio * k))
            kept_real.append(min(real, k) / real)
    out, ref = torch.cat(outs), torch.cat(refs)
    if skip.task == "embedding":
        fid = {"cosine_mean": round(float(F.cosine_similarity(out, ref, dim=-1).mean()), 5)}
    else:
        fid = {"top1_agreement": round(float((out.argmax(-1) == ref.argmax(-1)).float().mean()), 5)}
    result: dict = {"torch_fidelity_on_texts": fid, "texts": len(texts)}
    if kept_real:
        result["real_tokens_kept_fraction_mean"] = round(float(np.mean(kept_real)), 4)
    return result
