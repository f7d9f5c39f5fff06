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
    """Left: size on disk vs fidelity, one marker per artifact. Right: host median latency per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    offsets = [(8, 6), (8, -12), (-70, 6), (-70, -12)]
    for i, art in enumerate(report.artifacts):
        y = _fidelity_value(art)
        if y is None:
            continue
        ax.scatter(art.size.mb, y, s=70, marker=_FORMAT_MARKERS.get(art.format, "o"), alpha=0.8, edgecolors="black")
        ax.annotate(f"{art.format} {art.precision}", (art.size.mb, y), textcoords="offset points",
                    xytext=offsets[i % len(offsets)], fontsize=8)
    metric = "mean cosine vs teacher" if report.teacher.get("task") == "embedding" else "top-1 agreement vs teacher"
    ax.set_xlabel("artifact size on disk (MB)")
    ax.set_ylabel(metric)
    ax.set_title("Size vs fidelity (measured by running each artifact)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    labels, values, colors = [], [], []
    ref = report.reference.get("latency", {}).get("median_ms")
    if ref:
        labels.append("pytorch fp32 (teacher)")
        values.append(ref)
        colors.append("#999999")
    for art in report.artifacts:
        labels.append(f"{art.format} {art.precision}")
        values.append(art.latency.median_ms or 0.0)
        colors.append("#4c72b0" if art.latency.median_ms else "#dddddd")
    bx.barh(labels, values, color=colors)
    for idx, value in enumerate(values):
        bx.text(value, idx, f" {value:.1f} ms" if value else " not run", va="center", fontsize=8)
    bx.invert_yaxis()
    threads = report.host.get("threads_used")
    bx.set_xlabel(f"host median latency, ms (batch 1, {threads} threads)")
    bx.set_title("Latency measured on this host (not the device)", fontsize=10)
    bx.margins(x=0.25)
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
