"""The Pass extension point, modelled on Olive's `Pass` registry with typed configs."""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from edgekit.errors import UserError


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may need besides the model: the teacher, texts to learn or calibrate on, the profile."""

    teacher: Any
    texts: list[str]
    profile: Any
    seq_len: int
    records: list[dict[str, Any]] = field(default_factory=list)
    #: set by passes that change the vocabulary (vocab-prune): the tokenizer the artifacts and the bundle use
    tokenizer: Any = None
    #: training corpus for passes that learn (distill): a .txt file or directory; None = the shipped samples
    corpus: Any = None
    #: where learning passes keep checkpoints; None = their default cache directory
    checkpoint_dir: Any = None


class Pass(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    #: The option a bare shorthand value sets ("prune-ffn:0.5" -> ratio=0.5); None if the pass has none.
    primary_option: ClassVar[str | None] = None
    #: True when the pass's model must be lowered as graph control flow (every chosen converter must support it)
    control_flow: ClassVar[bool] = False

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    @abstractmethod
    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        """Return the transformed model (torch in, torch out, same forward contract)."""

    def check_order(self, before: list[str], after: list[str]) -> None:
        """Raise `UserError` if this pass cannot run after the passes named in `before` or before those in `after`.

        Called for every step before any pass runs, so a recipe in an impossible order fails in a second instead
        of after minutes of training. Default: any order works.
        """
        return None


def check_recipe_order(steps: list[tuple[str, Pass]]) -> None:
    """Let each pass refuse its position in the recipe (see `Pass.check_order`)."""
    names = [name for name, _ in steps]
    for i, (_, pass_) in enumerate(steps):
        pass_.check_order(names[:i], names[i + 1 :])


_REGISTRY: dict[str, type[Pass]] = {}
_discovered = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import edgekit.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"edgekit.passes.{info.name}")
    _discovered = True


def available_passes() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_pass(name: str, options: dict[str, Any]) -> Pass:
    _discover()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none are installed yet"
        raise UserError(f"unknown pass '{name}' in the recipe; available passes: {known}")
    cls = _REGISTRY[name]
    options = dict(options)
    if "__primary__" in options:
        primary = getattr(cls, "primary_option", None)
        if primary is None:
            raise UserError(f"pass '{name}' takes key=value options (e.g. '{name}:key=value'), not a bare value")
        options[primary] = options.pop("__primary__")
    try:
        config = cls.Config.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"pass '{name}': option '{'.'.join(map(str, first['loc']))}' {first['msg']}; fix the recipe") from exc
    return cls(config)
