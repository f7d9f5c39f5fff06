"""Teacher targets computed once per training text and reused in every later epoch.

The teacher is frozen and runs in eval mode, so its output and its mapped layers' token states for a given
text never change. Recomputing them costs a full teacher forward per text per epoch, about 40% of a 3-layer
student's training step; caching them makes every epoch after the first that much cheaper. Only texts
that recur are kept: corpus and extra texts, not augmented variants, which are new each epoch. Those
are run through the teacher on their own (not with the whole batch) and held only for the current batch.
Targets are stored as float16, because the 1e-3 relative rounding is far below the losses being fitted.
The cache stops growing at `max_bytes`, after which texts past the budget are recomputed each time.
"""

from __future__ import annotations

import torch

Entry = tuple[torch.Tensor, list[torch.Tensor]]


class TeacherCache:
    """Per-text teacher output and per-layer token states (real tokens only), padded back to any batch."""

    def __init__(self, recurring: set[str], layers: list[int], max_bytes: int = 3 << 30) -> None:
        self.recurring = recurring
        self.layers = layers
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._store: dict[str, Entry] = {}
        self._transient: dict[str, Entry] = {}

    def missing(self, texts: list[str]) -> list[str]:
        """The distinct texts of a batch the teacher still has to run on."""
        return [t for t in dict.fromkeys(texts) if t not in self._store and t not in self._transient]

    def lookup(self, texts: list[str], mask: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]] | None:
        """The batch's (teacher output, {layer: token states}) laid out on `mask`, or None if a text is missing."""
        if self.missing(texts):
            return None
        self.hits += 1
        entries = [self._store.get(t) or self._transient[t] for t in texts]
        real = mask.bool()
        out = torch.stack([e[0] for e in entries]).float()
        states: dict[int, torch.Tensor] = {}
        for pos, layer in enumerate(self.layers):
            width = entries[0][1][pos].shape[-1]
            full = torch.zeros((len(texts), mask.shape[1], width), dtype=torch.float32)
            for i, e in enumerate(entries):
                full[i, real[i]] = e[1][pos].float()
            states[layer] = full
        return out, states

    def store(self, texts: list[str], mask: torch.Tensor, out: torch.Tensor, states: dict[int, torch.Tensor]) -> None:
        """Keep recurring texts (within the budget); hold the others until `end_batch`."""
        real = mask.bool()
        for i, t in enumerate(texts):
            if t in self._store:
                continue
            entry = (out[i].detach().half(), [states[layer][i, real[i]].detach().half() for layer in self.layers])
            if t in self.recurring and self.bytes < self.max_bytes:
                self._store[t] = entry
                self.bytes += entry[0].numel() * 2 + sum(k.numel() * 2 for k in entry[1])
            else:
                self._transient[t] = entry

    def end_batch(self) -> None:
        self._transient.clear()

    def __len__(self) -> int:
        return len(self._store)
