"""Outlier-channel split for static int8: the torch-side step shared by the ONNX and TFLite `int8-static` paths.

Why (measured on all-MiniLM-L6-v2, seq 128, 100 held-out texts): with every weight MatMul taking
per-tensor int8 activations calibrated by min/max, mean cosine vs the teacher is ~0.93 in both
onnxruntime and LiteRT. The damage comes from a handful of input channels per Linear whose
calibrated range is 3-10x that of the others (the [CLS] "attention sink" values of BERT, e.g. one
FFN down-projection input channel at ~24 where the rest stay below ~5): one per-tensor scale then
wastes most of the int8 grid. Percentile clipping (ORT 99.999) does not help (~0.93): those values
matter. SmoothQuant-style rescaling (alpha 0.5 / 0.75) did not help either (~0.91-0.92): it moves
the range into the weight rows and breaks per-channel weight resolution.

What works (LLM.int8()-style decomposition, fixed at export time): for every `nn.Linear`, the `k`
input channels with the largest calibrated |x| go through a small float Linear, the rest through
the original one, which is then quantized with int8 activations:

    y = Linear(x * keep) + (x @ S) @ W[:, outlier].T     (keep = 0 on the outlier channels, S one-hot selection)

The result is exactly the original function in float (tests check it); with k = 8 of 384/1536
channels the float part is ~1% of the MatMul work and parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

#: submodule name of the float part; the converters exclude ops under this name from quantization
OUTLIER_SCOPE = "outlier_fp32"


class OutlierSplitLinear(nn.Module):
    """`linear(x)` computed as an int8-friendly part on the inlier channels plus a float part on the outliers."""

    def __init__(self, linear: nn.Linear, outlier: torch.Tensor) -> None:
        super().__init__()
        keep = torch.ones(linear.in_features, dtype=linear.weight.dtype)
        keep[outlier] = 0.0
        self.inlier = copy.deepcopy(linear)
        with torch.no_grad():  # rows that only ever see zeros: zero them so they don't widen per-channel weight ranges
            self.inlier.weight[:, outlier] = 0.0
        # Selecting the channels is a one-hot Linear, not `index_select`: converters lower it to one small
        # FULLY_CONNECTED / MatMul (index_select becomes TRANSPOSE + GATHER_ND + TRANSPOSE in TFLite).
        select = nn.Linear(linear.in_features, len(outlier), bias=False)
        project = nn.Linear(len(outlier), linear.out_features, bias=False)
        with torch.no_grad():
            select.weight.zero_()
            select.weight[torch.arange(len(outlier)), outlier] = 1.0
            project.weight.copy_(linear.weight[:, outlier])
        setattr(self, OUTLIER_SCOPE, nn.Sequential(select, project))
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inlier(x * self.keep) + getattr(self, OUTLIER_SCOPE)(x)


@torch.no_grad()
def channel_absmax(model: nn.Module, calibration: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of every `nn.Linear` in `model`, over the real (unmasked) tokens of `calibration`."""
    stats: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor | None] = [None]
    hooks = []

    def hook(name: str):
        def fn(_module, args) -> None:
            x = args[0].detach().float()
            mask = current_mask[0]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask]
            a = x.reshape(-1, x.shape[-1]).abs().amax(dim=0)
            stats[name] = a if name not in stats else torch.maximum(stats[name], a)

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        for row in calibration:
            feed = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in row.items()}
            if "attention_mask" in feed and len(feed["attention_mask"]) == 1:  # padding never sets a range: trim it
                n = max(int(feed["attention_mask"].sum()), 1)
                if bool(feed["attention_mask"][0, :n].all()):
                    feed = {k: v[:, :n] for k, v in feed.items()}
            current_mask[0] = feed["attention_mask"].bool() if "attention_mask" in feed else None
            model(**feed)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def split_outlier_channels(
    model: nn.Module, calibration: list[dict[str, np.ndarray]], k: int
) -> tuple[nn.Module, dict[str, list[int]]]:
    """A copy of `model` whose every `nn.Linear` routes its `k` largest-range input channels through float.

    Returns the copy and `{linear name: outlier channel indices}`. `k <= 0` returns the model unchanged.
    """
    if k <= 0 or not calibration:
        return model, {}
    stats = channel_absmax(model, calibration)
    out = copy.deepcopy(model)
    chosen: dict[str, list[int]] = {}
    for name, absmax in stats.items():
        n = min(k, absmax.numel() - 1)
        if n <= 0:
            continue
        idx = torch.sort(torch.topk(absmax, n).indices).values
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, OutlierSplitLinear(getattr(parent, attr), idx))
        chosen[name] = idx.tolist()
    return out, chosen
