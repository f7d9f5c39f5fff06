"""Compression passes (torch -> torch), one module each, registered by name.

A pass module defines a `Pass` subclass with a `name`, a pydantic `Config` and
`apply(model, ctx)`, decorated with `@register_pass`; `get_pass` discovers modules in
this package on first use, so adding a pass is one new file plus its test.
"""

from edgekit.passes.base import Pass, PassContext, available_passes, check_recipe_order, get_pass, register_pass

__all__ = ["Pass", "PassContext", "available_passes", "check_recipe_order", "get_pass", "register_pass"]
