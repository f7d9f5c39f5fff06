"""Distilled students of all-MiniLM-L6-v2, measured in the exported artifacts.

Rows: the teacher (reference), the 3-layer student (ONNX and TFLite fp32, and int8 = post-training dynamic
quantization of the distilled student; with `--qat-student`, int8 after quantization-aware distillation), and the
CNN and BiLSTM students (ONNX fp32). For each: parameters,
artifact size with / without embedding tables, host latency speedup vs the fp32 ONNX teacher (1 thread,
batch 1, seq 128, median of interleaved rounds) and mean / min cosine vs the PyTorch teacher on the held-out
texts of the distill pass (the seeded split of samples/texts it never trained on).

The 3-layer student comes from `--student DIR` (what `edgekit compress` wrote) or is trained here with
`--recipe`; the small students are trained here (`--small-recipe`, add `--skip-small` to leave them out).
Training reuses finished checkpoints in ~/.cache/edgekit/distill, so a rerun only re-measures.

    python bench/distill.py [--student DIR] [--recipe R] [--small-recipe R] [--rounds N] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from converters.base import get_converter
from edgekit.distill.data import load_corpus, split_heldout
from edgekit.model import load_teacher, parameter_counts
from edgekit.passes import PassContext, get_pass
from edgekit.recipe import parse_recipe
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs

SEQ_LEN = 128
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."
DEFAULT_RECIPE = "distill:layers=3"
#: the small students train on the shipped corpus too (extra=auto); epochs after the first reuse cached teacher outputs
DEFAULT_SMALL = "epochs=3,augment_copies=0"


def _run_all(runtime, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(inputs["input_ids"])
    return np.concatenate([next(iter(runtime.run({k: v[i : i + 1] for k, v in inputs.items()}).values())) for i in range(n)]).astype(
        np.float32
    )


def _train(teacher, recipe: str, console: Console) -> tuple[torch.nn.Module, dict]:
    parsed = parse_recipe(recipe)
    ctx = PassContext(teacher=teacher, texts=[], profile=None, seq_len=SEQ_LEN)
    model = copy.deepcopy(teacher.module)
    for step in parsed.passes:
        console.print(f"  pass {step.name} {step.options}")
        model = get_pass(step.name, step.options).apply(model, ctx)
    return model.eval(), (ctx.records[-1] if ctx.records else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, help="3-layer student directory written by edgekit compress")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe that trains the 3-layer student when --student is not given")
    parser.add_argument("--qat-student", type=Path, help="3-layer student after quantization-aware distillation")
    parser.add_argument("--small-recipe", default=DEFAULT_SMALL, help="distill options (after student=...) for the CNN and BiLSTM")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "distill.json")
    args = parser.parse_args()
    console = Console(width=200)
    torch.set_num_threads(1)

    teacher = load_teacher()
    _, heldout = split_heldout(load_corpus(None), 0.2, 0)  # the distill pass's default split (heldout=0.2, seed=0)
    inputs = teacher.tokenize(heldout, SEQ_LEN)
    reference = np.concatenate([teacher.run({k: v[i : i + 32] for k, v in inputs.items()}) for i in range(0, len(heldout), 32)])
    one = teacher.tokenize([LATENCY_TEXT], SEQ_LEN)

    models: list[tuple[str, torch.nn.Module, dict, list[tuple[str, str]]]] = [("teacher", teacher.module, {}, [("onnx", "fp32")])]
    console.print("[bold]3-layer student[/bold]")
    if args.student:
        student = load_teacher(args.student).module
        info = {"source": str(args.student)}
        meta = args.student / "edgekit_compress.json"
        if meta.is_file():
            info["records"] = json.loads(meta.read_text()).get("passes")
    else:
        student, record = _train(teacher, args.recipe, console)
        info = {"recipe": args.recipe, "records": [record]}
    models.append(("layers (3)", student, info, [("onnx", "fp32"), ("tflite", "fp32"), ("onnx", "int8"), ("tflite", "int8")]))
    if args.qat_student:
        meta = args.qat_student / "edgekit_compress.json"
        qat_info = {"source": str(args.qat_student), "records": json.loads(meta.read_text()).get("passes") if meta.is_file() else None}
        models.append(("layers (3) QAT", load_teacher(args.qat_student).module, qat_info, [("onnx", "int8"), ("tflite", "int8")]))
    if not args.skip_small:
        for kind in ("cnn", "bilstm"):
            console.print(f"[bold]{kind} student[/bold]")
            recipe = f"distill:student={kind},{args.small_recipe}"
            small, record = _train(teacher, recipe, console)
            models.append((kind, small, {"recipe": recipe, "records": [record]}, [("onnx", "fp32")]))

    rows: list[dict] = []
    runtimes: dict[int, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, info, targets in models:
            counts = parameter_counts(model)
            with torch.no_grad():
                torch_out = np.concatenate(
                    [model(**{k: torch.from_numpy(v[i : i + 32]) for k, v in inputs.items()}).numpy() for i in range(0, len(heldout), 32)]
                )
            for fmt, precision in targets:
                conv = get_converter(fmt)
                started = time.perf_counter()
                art = conv.lower(model, teacher.export_spec(precision, one), Path(tmp) / f"{label.replace(' ', '_')}-{fmt}-{precision}")
                export_s = time.perf_counter() - started
                runtime = conv.runtime(art, 1)
                cos = cosine_rows(reference, _run_all(runtime, inputs))
                size, emb = art.size_bytes(), art.embedding_bytes
                runtimes[len(rows)] = runtime
                rows.append(
                    {
                        "student": label,
                        "format": fmt,
                        "precision": precision + ((" (QAT)" if "QAT" in label else " (PTQ)") if precision == "int8" else ""),
                        "parameters": counts["total"],
                        "parameters_non_embedding": counts["non_embedding"],
                        "size_mb": size / 1e6,
                        "size_without_embeddings_mb": None if emb is None else (size - emb) / 1e6,
                        "cosine_mean": float(cos.mean()),
                        "cosine_min": float(cos.min()),
                        "torch_cosine_mean": float(cosine_rows(reference, torch_out).mean()),
                        "export_seconds": export_s,
                        "info": info,
                    }
                )
                console.print(f"  {label} {fmt} {precision}: {size / 1e6:.1f} MB, held-out mean cosine {cos.mean():.4f}")
        console.print("timing (interleaved rounds, 1 thread)...")
        medians: dict[int, list[float]] = {i: [] for i in runtimes}
        for _ in range(args.rounds):
            for i, runtime in runtimes.items():
                medians[i].append(time_runs(lambda rt=runtime: rt.run(one), warmup=3, repeats=args.repeats)["median_ms"])
    latency = {i: float(np.median(v)) for i, v in medians.items()}
    for i, r in enumerate(rows):
        r["latency_ms_median"] = latency[i]
        r["latency_ms_rounds"] = medians[i]
        r["speedup_vs_onnx_teacher"] = latency[0] / latency[i]

    table = Table(title=f"distilled students of all-MiniLM-L6-v2 — 1 thread, seq {SEQ_LEN}, {len(heldout)} held-out texts")
    for col in ("student", "artifact", "params", "size MB", "w/o emb MB", "latency ms", "speedup", "cos mean", "cos min"):
        table.add_column(col, justify="left" if col in ("student", "artifact") else "right")
    for r in rows:
        table.add_row(
            r["student"],
            f"{r['format']} {r['precision']}",
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['size_mb']:.1f}",
            "-" if r["size_without_embeddings_mb"] is None else f"{r['size_without_embeddings_mb']:.1f}",
            f"{r['latency_ms_median']:.2f}",
            f"{r['speedup_vs_onnx_teacher']:.2f}x",
            f"{r['cosine_mean']:.4f}",
            f"{r['cosine_min']:.4f}",
        )
    console.print(table)
    result = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher.name,
        "seq_len": SEQ_LEN,
        "threads": 1,
        "latency": f"batch 1, '{LATENCY_TEXT}' padded to {SEQ_LEN}; median of {args.rounds} interleaved rounds of "
        f"{args.repeats} runs after 3 warm-up runs; measured-host",
        "fidelity": f"cosine vs the PyTorch teacher on the {len(heldout)} held-out texts of the distill split (never trained on)",
        "host": host_description() | {"load_average": os.getloadavg()},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
