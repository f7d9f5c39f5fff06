"""Read intermediate tensors off a running HF encoder with forward hooks, without changing its forward.

The edgekit wrappers (`EmbeddingModel`, `ClassifierModel`) return only the final output; distillation also
needs per-layer token states and the q/k/v projections. Hooks keep the one forward contract intact (the
same module is exported later) and work for every encoder family `find_encoder` knows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekit.passes._saliency import find_encoder


@dataclass
class Captured:
    """Per layer (in stack order): output token states and q/k/v projections, when asked for."""

    states: dict[int, torch.Tensor] = field(default_factory=dict)
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(model: nn.Module, layers: list[int], states: bool, qk: bool, v: bool) -> Iterator[Captured]:
    """While active, every forward of `model` fills the yielded `Captured` for `layers`."""
    got = Captured()
    handles = []
    if layers and (states or qk or v):
        enc = find_encoder(model)

        def keep(store: dict[int, torch.Tensor], i: int):
            def hook(_module: nn.Module, _args: tuple, output) -> None:
                store[i] = output[0] if isinstance(output, tuple) else output

            return hook

        for i in layers:
            if states:
                handles.append(enc.layers[i].register_forward_hook(keep(got.states, i)))
            if qk:
                handles.append(enc.get(i, "q").register_forward_hook(keep(got.q, i)))
                handles.append(enc.get(i, "k").register_forward_hook(keep(got.k, i)))
            if v:
                handles.append(enc.get(i, "v").register_forward_hook(keep(got.v, i)))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()
