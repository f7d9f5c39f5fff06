"""Quantization-aware distillation: train through the rounding the int8 export will apply.

While active, every `nn.Linear` inside the transformer layers computes with fake-quantized weights
(symmetric int8 per output channel, as the ONNX and TFLite int8 exports store them) and fake-quantized
inputs (asymmetric uint8 per tensor with a range measured on the tensor itself, as dynamic quantization
does at run time). Rounding has no gradient, so both use the straight-through estimator: the forward
pass sees the quantized value, the backward pass treats rounding as the identity (Bengio et al. 2013;
Jacob et al. 2018). On exit the float weights stay (trained to sit well on the int8 grid) and the model
is an ordinary float model again, exported with the converters' usual int8 path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgekit.passes._saliency import find_encoder


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (row), straight-through."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
    q = (w / scale).round().clamp(-127, 127) * scale
    return w + (q - w).detach()


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric uint8 per tensor over the tensor's own range (dynamic quantization), straight-through."""
    lo = x.detach().min().clamp(max=0.0)
    hi = x.detach().max().clamp(min=0.0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-8)
    zero = (-lo / scale).round()
    q = ((x / scale).round() + zero).clamp(0, 255)
    return x + ((q - zero) * scale - x).detach()


class _WeightFakeQuant(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w)


def _input_hook(_module: nn.Module, args: tuple) -> tuple:
    return (fake_quant_activation(args[0]),) + tuple(args[1:])


def quantizable_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linears of the transformer layers (what the int8 exports quantize)."""
    enc = find_encoder(model)
    return [m for layer in enc.layers for m in layer.modules() if isinstance(m, nn.Linear)]


@contextmanager
def fake_quant(model: nn.Module) -> Iterator[int]:
    """Train `model` through int8 rounding while active; yields how many Linears are fake-quantized."""
    linears = quantizable_linears(model)
    handles = []
    for lin in linears:
        parametrize.register_parametrization(lin, "weight", _WeightFakeQuant())
        handles.append(lin.register_forward_pre_hook(_input_hook))
    try:
        yield len(linears)
    finally:
        for h in handles:
            h.remove()
        for lin in linears:
            parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
