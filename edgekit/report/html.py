"""Self-contained report.html: a table of every artifact and a size/fidelity/latency plot.

The plot is rendered by matplotlib to PNG and inlined as base64, so the file can be
opened from disk, attached to a CI run or mailed without its folder.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from edgekit.report.schema import Report

_FORMAT_MARKERS = {"onnx": "o", "tflite": "s", "coreml": "^"}


def _fidelity_value(art) -> float | None:
    metrics = art.fidelity.metrics
    return metrics.get("cosine_mean", metrics.get("top1_agreement"))


def tradeoff_plot_png(report: Report) -> bytes:
    """Size (x) vs fidelity (y); marker area grows with host latency; labelled per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    latencies = [a.latency.median_ms for a in report.artifacts if a.latency.median_ms]
    max_lat = max(latencies) if latencies else 1.0
    for art in report.artifacts:
        y = _fidelity_value(art)
        if y is None:
            continue
        lat = art.latency.median_ms
        area = 60 + 400 * (lat / max_lat) if lat else 60
        ax.scatter(
            art.size.mb,
            y,
            s=area,
            marker=_FORMAT_MARKERS.get(art.format, "o"),
            alpha=0.7,
            edgecolors="black",
            facecolors="none" if lat is None else None,
        )
        label = f"{art.format} {art.precision}" + (f"\n{lat:.1f} ms" if lat else "\n(latency not run)")
        ax.annotate(label, (art.size.mb, y), textcoords="offset points", xytext=(8, -4), fontsize=8)
    metric = "mean cosine vs teacher" if report.teacher.get("task") == "embedding" else "top-1 agreement vs teacher"
    ax.set_xlabel("artifact size on disk (MB)")
    ax.set_ylabel(metric)
    ax.set_title("Size vs fidelity (marker area ~ host median latency)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_html(report: Report) -> str:
    env = Environment(loader=PackageLoader("edgekit.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    template = env.get_template("report.html.j2")
    plot = base64.b64encode(tradeoff_plot_png(report)).decode("ascii")
    return template.render(r=report, plot_b64=plot, fidelity_value=_fidelity_value)


def write_html(report: Report, path: Path) -> None:
    path.write_text(render_html(report), encoding="utf-8")
