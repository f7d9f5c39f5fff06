"""Recipes: an ordered list of passes plus the precisions each converter lowers to.

Shorthand, as typed on the command line: steps joined by '+', each `name`, `name:value` (the
pass's primary option) or `name:key=value,key=value`; the precision words (`PRECISIONS`) are not passes but
the precision intent every converter lowers natively, or refuses with a one-line error. Example: `early-exit:layers=2+int8`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    """Parse the shorthand, or a recipe YAML file (a path ending in .yaml/.yml); empty means "the teacher as it is"."""
    stripped = (text or "").strip()
    if stripped.lower().endswith((".yaml", ".yml")):
        return parse_recipe_file(Path(stripped))
    recipe = Recipe(shorthand=stripped)
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


def parse_recipe_file(path: Path) -> Recipe:
    """The YAML form of a recipe: the same steps, one per list item, options as a mapping.

        passes:
          - prune-heads: {ratio: 0.5}
          - svd: 0.9                    # a bare value sets the pass's primary option
          - early-exit: {layers: [2, 4]}
        precisions: [int8]
    """
    import yaml

    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist; give a YAML file with 'passes:' and 'precisions:' or a shorthand like 'int8'")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe file {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the line it names") from exc
    if not isinstance(data, dict) or set(data) - {"passes", "precisions"}:
        raise UserError(f"recipe file {path} must be a mapping with only 'passes' and 'precisions' keys")
    steps, precisions = data.get("passes") or [], data.get("precisions") or []
    if not isinstance(steps, list) or not isinstance(precisions, list):
        raise UserError(f"recipe file {path}: 'passes' and 'precisions' must be lists")
    recipe = Recipe()
    for item in steps:
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, value = next(iter(item.items()))
            options = dict(value) if isinstance(value, dict) else ({} if value is None else {PRIMARY: value})
        else:
            raise UserError(f"recipe file {path}: each pass is 'name' or 'name: {{option: value}}', got {item!r}")
        if name in PRECISIONS:
            raise UserError(f"recipe file {path}: '{name}' is a precision; list it under 'precisions:'")
        recipe.passes.append(PassStep(str(name), options))
    for word in precisions:
        if word not in PRECISIONS:
            raise UserError(f"recipe file {path}: unknown precision '{word}'; use one of {', '.join(PRECISIONS)}")
        if word not in recipe.precisions:
            recipe.precisions.append(word)
    recipe.shorthand = to_shorthand(recipe)  # what the report shows and checkpoints hash: the content, not the path
    return recipe


def to_shorthand(recipe: Recipe) -> str:
    """The one-line form of a recipe; `parse_recipe(to_shorthand(r))` gives the same steps back."""

    def value(v: Any) -> str:
        return ",".join(str(x) for x in v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)

    parts = []
    for step in recipe.passes:
        opts = [value(v) if k == PRIMARY else f"{k}={value(v)}" for k, v in step.options.items()]
        opts.sort(key=lambda o: "=" in o)  # a bare primary value must come first
        parts.append(step.name + (":" + ",".join(opts) if opts else ""))
    return "+".join(parts + recipe.precisions)
