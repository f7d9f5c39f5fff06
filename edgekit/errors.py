"""Error hierarchy: the CLI maps each class to an exit code and a one-line message.

`UserError` is bad input the user can fix (exit 2); `BudgetError` is a missed
fidelity/latency/size budget (exit 3). Anything else escaping the API is a bug
and is shown with its traceback (exit 1).
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code = 1


class UserError(EdgekitError):
    """Bad input: unknown device, missing model, existing output dir, unsupported op...

    The message must name the problem and the fix in one line.
    """

    exit_code = 2


class BudgetError(EdgekitError):
    """A device budget (fidelity, latency or size) was missed."""

    exit_code = 3


class UnsupportedOpError(UserError):
    """The model needs an op that the target format cannot run with builtin kernels."""
