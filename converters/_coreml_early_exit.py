"""Early exit in Core ML: traced segments under `torch.jit.script` control flow -> MIL `cond`.

coremltools turns a TorchScript `if` on a tensor into a MIL `cond` whose branches are blocks, so
the layers after an exit sit inside the else-block and do not run when the model exits (on a
device: Core ML prediction needs macOS/iOS; here the MIL reference interpreter follows the
same branches). Each segment is traced (plain tensor code); only the chain of decisions is
scripted. The threshold is a buffer of the scripted module, i.e. a constant of the program.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from converters.base import ExportSpec


class _Tail(nn.Module):
    """The layers after the last exit and the model's own head; exit_layer = number of layers."""

    def __init__(self, seg: torch.jit.ScriptModule, n_layers: int) -> None:
        super().__init__()
        self.seg = seg
        self.register_buffer("layer", torch.tensor([n_layers], dtype=torch.int32))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seg(hidden, attention_mask), self.layer * 1


class _Link(nn.Module):
    """Segment j (a middle segment), then: exit here, or hand over to the rest of the chain."""

    #: a TorchScript constant, so the branch for the other segment signature is never compiled
    __constants__ = ["uses_state"]

    def __init__(self, seg: torch.jit.ScriptModule, rest: nn.Module, layer: int, threshold: float, uses_state: bool) -> None:
        super().__init__()
        self.seg = seg
        self.rest = rest
        self.uses_state = uses_state
        self.register_buffer("layer", torch.tensor([layer], dtype=torch.int32))
        self.register_buffer("threshold", torch.tensor([threshold]))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_state:
            hidden, out, flag, state = self.seg(hidden, attention_mask, self.threshold, state)
        else:
            hidden, out, flag = self.seg(hidden, attention_mask, self.threshold)
        # branch outputs are two tensors, not a tuple: coremltools' `cond` cannot return tuples
        if bool(flag):
            result, layer = out, self.layer * 1  # an op output: coremltools rejects a bare attribute as a block output
        else:
            result, layer = self.rest(hidden, attention_mask, state)
        return result, layer


class _Head(nn.Module):
    """The first segment (embeddings .. first exit) and the first decision; the model's inputs."""

    __constants__ = ["uses_state"]

    def __init__(self, seg: torch.jit.ScriptModule, rest: nn.Module, layer: int, threshold: float, uses_state: bool) -> None:
        super().__init__()
        self.seg = seg
        self.rest = rest
        self.uses_state = uses_state
        self.register_buffer("layer", torch.tensor([layer], dtype=torch.int32))
        self.register_buffer("threshold", torch.tensor([threshold]))
        self.register_buffer("initial_state", torch.tensor([[-1.0, 0.0]]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.initial_state
        if self.uses_state:
            hidden, out, flag, state = self.seg(input_ids, attention_mask, self.threshold)
        else:
            hidden, out, flag = self.seg(input_ids, attention_mask, self.threshold)
        # branch outputs are two tensors, not a tuple: coremltools' `cond` cannot return tuples
        if bool(flag):
            result, layer = out, self.layer * 1  # an op output: coremltools rejects a bare attribute as a block output
        else:
            result, layer = self.rest(hidden, attention_mask, state)
        return result, layer


@torch.no_grad()
def script_early_exit(model, spec: ExportSpec) -> tuple[torch.jit.ScriptModule, list[bool]]:
    """A scripted module with the same inputs as the artifact and outputs (output, exit_layer int32)."""
    if "token_type_ids" in spec.input_names:
        raise ValueError("Core ML early exit supports models without token_type_ids inputs")
    ids = torch.from_numpy(np.asarray(spec.example_inputs["input_ids"][:1], dtype=np.int64))
    mask = torch.from_numpy(np.asarray(spec.example_inputs["attention_mask"][:1], dtype=np.int64))
    thr = model.threshold.detach().clone()
    segs = model.segments()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = torch.jit.trace(segs[0], (ids, mask, thr), check_trace=False)
        hidden, _, _, *state = segs[0](ids, mask, thr)
        traced_middle = []
        for seg in segs[1:-1]:
            traced_middle.append(torch.jit.trace(seg, (hidden, mask, thr, *state), check_trace=False))
            hidden, _, _, *state = seg(hidden, mask, thr, *state)
        last = torch.jit.trace(segs[-1], (hidden, mask), check_trace=False)
    chain: nn.Module = _Tail(last, model.num_layers)
    threshold = float(thr[0])
    for j in range(len(traced_middle), 0, -1):
        chain = _Link(traced_middle[j - 1], chain, model.exits[j], threshold, model.uses_state)
    head = _Head(first, chain, model.exits[0], threshold, model.uses_state).eval()
    scripted = torch.jit.script(head)
    return scripted, [True, False]
