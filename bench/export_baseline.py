"""Baseline for the embedded teacher: PyTorch fp32 vs every artifact edgekit exports.

Prints a table and writes JSON (default bench/results/export_baseline.json):
size MB (with / without embedding tables), mean cosine vs the teacher measured in each
artifact's own runtime, and median latency at 1 and 2 threads (batch 1, seq 128, median
of repeated runs after warm-up, measured on this host).

    python bench/export_baseline.py [--texts N] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from converters.base import get_converter
from edgekit import api
from edgekit.bundle import load_bundle
from edgekit.model import load_teacher
from edgekit.verify.latency import host_description, time_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=391, help="verification texts for fidelity (default: all shipped)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency figure")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "export_baseline.json")
    args = parser.parse_args()

    threads_list = [t for t in (1, 2) if t <= (os.cpu_count() or 1)]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        result = api.export(
            device="iphone13",
            formats=["onnx", "tflite", "coreml"],
            precisions=["fp32", "fp16", "int8"],
            out=bundle,
            max_texts=args.texts,
            latency_repeats=args.repeats,
            allow_over_budget=True,
        )
        report = result.report.model_dump(mode="json")
        artifacts = {a.path.name: a for a in load_bundle(bundle)[1]}
        teacher = load_teacher()
        one = teacher.tokenize(["The quick brown fox jumps over the lazy dog near the riverbank."], 128)
        rows = []
        counts = teacher.parameter_counts()
        torch_row = {
            "artifact": "pytorch fp32 (teacher)",
            "size_mb": 4 * counts["total"] / 1e6,
            "size_without_embeddings_mb": 4 * counts["non_embedding"] / 1e6,
            "size_how": "4 B x parameters",
            "cosine_mean": 1.0,
            "fidelity_how": "reference",
            "latency_ms": {},
        }
        tensors = {k: torch.from_numpy(v) for k, v in one.items()}
        for t in threads_list:
            torch.set_num_threads(t)
            with torch.no_grad():
                torch_row["latency_ms"][t] = time_runs(lambda: teacher.module(**tensors), repeats=args.repeats)["median_ms"]
        rows.append(torch_row)
        for art in report["artifacts"]:
            conv = get_converter(art["format"])
            row = {
                "artifact": art["path"],
                "size_mb": art["size"]["mb"],
                "size_without_embeddings_mb": art["size"]["without_embeddings_mb"],
                "size_how": "file on disk",
                "cosine_mean": art["fidelity"]["metrics"].get("cosine_mean"),
                "cosine_min": art["fidelity"]["metrics"].get("cosine_min"),
                "fidelity_how": f"{art['fidelity']['provenance']} ({art['fidelity']['runtime']}, {art['fidelity']['n_texts']} texts)",
                "latency_ms": {},
            }
            artifact = artifacts[art["path"]]
            for t in threads_list:
                runtime = conv.runtime(artifact, t)
                if not runtime.measures_latency:
                    row["latency_ms"][t] = None
                    row["latency_note"] = "not run: Core ML needs macOS (fidelity from the MIL reference interpreter)"
                    break
                feeds = {k: v for k, v in one.items() if k in {i.name for i in artifact.inputs}}
                row["latency_ms"][t] = time_runs(lambda r=runtime, f=feeds: r.run(f), repeats=args.repeats)["median_ms"]
            rows.append(row)

    out = {
        "host": host_description(),
        "seq_len": 128,
        "batch": 1,
        "repeats": args.repeats,
        "texts": args.texts,
        "versions": report["versions"],
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    table = Table(title=f"edgekit export baseline — all-MiniLM-L6-v2, seq 128, batch 1, host {out['host']['cpu']}")
    for col in ["artifact", "size MB", "w/o emb MB", "mean cos", "how"] + [f"ms @{t}thr" for t in threads_list]:
        table.add_column(col, justify="left" if col in ("artifact", "how") else "right")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(
            r["artifact"],
            fmt(r["size_mb"], ".1f"),
            fmt(r["size_without_embeddings_mb"], ".1f"),
            fmt(r["cosine_mean"], ".5f"),
            r["fidelity_how"],
            *[fmt(r["latency_ms"].get(t), ".2f") for t in threads_list],
        )
    Console(width=200).print(table)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
