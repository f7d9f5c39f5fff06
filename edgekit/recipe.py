"""Recipes: an ordered list of passes plus the precisions each converter lowers to.

Shorthand, as typed on the command line: steps joined by '+', each `name`, `name:value` (the
pass's primary option) or `name:key=value,key=value`; the precision words (`PRECISIONS`) are not passes but
the precision intent every converter lowers natively, or refuses with a one-line error. Example: `early-exit:layers=2+int8`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import UserError

#: Precision words and what each means; a converter lists the ones it can lower in `Converter.precisions`.
PRECISION_MEANINGS = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights and activations (float32 inputs/outputs)",
    "int8": "int8 weights, activations quantized at run time (dynamic range)",
    "int8-static": "int8 weights and activations, activation ranges calibrated on sample texts (float fallbacks reported)",
    "int8-weights": "weight-only int8 (per channel); activations stay float",
    "int4-weights": "weight-only int4, block-wise where the format supports it; activations stay float",
}
PRECISIONS = tuple(PRECISION_MEANINGS)
#: Key under which a bare value ("prune-ffn:0.5") is held until the pass says which option it means.
PRIMARY = "__primary__"


@dataclass
class PassStep:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    passes: list[PassStep] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    shorthand: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"shorthand": self.shorthand, "passes": [vars(p) for p in self.passes], "precisions": self.precisions}


def _parse_value(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def parse_recipe(text: str | None) -> Recipe:
    """Parse the shorthand; an empty recipe means "export the teacher as it is"."""
    recipe = Recipe(shorthand=(text or "").strip())
    if not recipe.shorthand:
        return recipe
    for raw_step in recipe.shorthand.split("+"):
        step = raw_step.strip()
        if not step:
            raise UserError(f"empty step in recipe '{text}'; join steps with a single '+', e.g. 'int8'")
        if step in PRECISIONS:
            if step not in recipe.precisions:
                recipe.precisions.append(step)
            continue
        name, colon, opts = step.partition(":")
        options: dict[str, Any] = {}
        if colon and not opts.strip():
            raise UserError(f"recipe step '{step}' ends with ':' but gives no options; e.g. '{name}:0.5' or drop the ':'")
        if opts:
            # "layers=2,4,keep=0.5" -> a comma also separates list values: a bare item extends the last key.
            last_key = None
            for item in opts.split(","):
                if "=" in item:
                    key, _, value = item.partition("=")
                    last_key = key.strip()
                    if not last_key or not value.strip():
                        raise UserError(f"recipe step '{step}' has an empty option; write key=value, e.g. '{name}:ratio=0.5'")
                    options[last_key] = _parse_value(value.strip())
                elif last_key is None and not options:
                    # a bare first value goes to the pass's primary option, e.g. "prune-ffn:0.5" -> ratio=0.5
                    options[PRIMARY] = _parse_value(item.strip())
                    last_key = PRIMARY
                elif last_key is not None:
                    prev = options[last_key]
                    options[last_key] = (prev if isinstance(prev, list) else [prev]) + [_parse_value(item.strip())]
                else:
                    raise UserError(f"recipe step '{step}' needs key=value options, e.g. '{name}:layers=3'")
        recipe.passes.append(PassStep(name.strip(), options))
    return recipe
