"""HTML for `edgekit profile`: a latency table, per-op breakdowns and a latency/fidelity Pareto plot."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of points not dominated by another (lower latency and higher-or-equal fidelity)."""
    front = []
    for name, lat, fid in points:
        dominated = any((ol <= lat and of >= fid) and (ol < lat or of > fid) for _, ol, of in points)
        if not dominated:
            front.append(name)
    return front


def pareto_plot_png(data: dict[str, Any]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["artifact"], r["latency_ms"], r["fidelity"]) for r in data["rows"] if r["latency_ms"] and r["fidelity"] is not None]
    if not points:
        return None
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, lat, fid in points:
        ax.scatter(lat, fid, s=60, c="#c44e52" if name in front else "#4c72b0", edgecolors="black")
        ax.annotate(name, (lat, fid), textcoords="offset points", xytext=(6, 4), fontsize=8)
    line = sorted((lat, fid) for name, lat, fid in points if name in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="#c44e52", alpha=0.6, label="Pareto front")
    ax.set_xlabel(f"latency ms ({data['runner']}: {data['rows'][0]['provenance'] if data['rows'] else ''})")
    ax.set_ylabel("fidelity vs teacher (from the bundle's report)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(x=0.2, y=0.1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_profile_html(data: dict[str, Any], path: Path) -> None:
    env = Environment(loader=PackageLoader("edgekit.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    png = pareto_plot_png(data)
    html = env.get_template("profile.html.j2").render(d=data, plot_b64=base64.b64encode(png).decode() if png else None)
    path.write_text(html, encoding="utf-8")
