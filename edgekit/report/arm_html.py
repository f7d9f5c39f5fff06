"""HTML for `edgekit verify --arch arm64`: the "ARM numerics (emulated)" table and the per-CPU sweep."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def sweep(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per artifact, one cell per CPU model: ARM vs x86 max abs / mismatches / XNNPACK nodes / status."""
    table: dict[str, dict[str, Any]] = {}
    for r in data["rows"]:
        row = table.setdefault(r["artifact"], {"artifact": r["artifact"], "cells": {}, "spread": data["artifacts"].get(r["artifact"], {})})
        row["cells"][r["cpu"]] = r
    return list(table.values())


def render_arm_html(data: dict[str, Any]) -> str:
    env = Environment(loader=PackageLoader("edgekit.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    features: dict[str, Any] = {}
    for r in data["rows"]:
        features.setdefault(r["cpu"], r.get("cpu_features", {}))
    return env.get_template("arm.html.j2").render(d=data, sweep=sweep(data), features=features)
