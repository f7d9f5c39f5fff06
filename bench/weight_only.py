"""Weight-only precisions (`int8-weights`, `int4-weights`) on the embedded teacher, per format.

For ONNX and TFLite (baseline fp32) and Core ML (baseline fp16): export the teacher at each precision,
then measure size MB (and % of the format's baseline), mean / min cosine vs the PyTorch teacher on
held-out texts (the split of bench/passes.py: first N of `random.Random(0).shuffle` over the shipped
texts), and, for ONNX and TFLite, median latency at 1 thread, batch 1, seq 128 (interleaved rounds).
Core ML runs through the MIL reference interpreter on Linux (numpy: a check of graph + weights, not
of device kernels; no latency), on fewer texts.

    python bench/weight_only.py [--eval-texts N] [--coreml-texts N] [--rounds N] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from converters.base import get_converter
from edgekit.model import load_teacher
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import heldout_split, load_texts

SEQ_LEN = 128
PLAN = {
    "onnx": ("fp32", "int8-weights", "int4-weights"),
    "tflite": ("fp32", "int8-weights", "int4-weights"),
    "coreml": ("fp16", "int8-weights", "int4-weights"),
}
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."


def _run_all(runtime, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(inputs["input_ids"])
    rows = [next(iter(runtime.run({k: v[i : i + 1] for k, v in inputs.items()}).values())) for i in range(n)]
    return np.concatenate(rows).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-texts", type=int, default=100)
    parser.add_argument("--coreml-texts", type=int, default=100, help="held-out texts run through the MIL reference")
    parser.add_argument("--formats", default="onnx,tflite,coreml")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds per artifact")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per round (after 3 warm-up runs)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "weight_only.json")
    args = parser.parse_args()
    console = Console(width=200)
    torch.set_num_threads(1)

    teacher = load_teacher()
    texts = load_texts()
    eval_texts, _ = heldout_split(texts, args.eval_texts)
    eval_inputs = teacher.tokenize(eval_texts, SEQ_LEN)
    reference = np.concatenate([teacher.run({k: v[i : i + 25] for k, v in eval_inputs.items()}) for i in range(0, len(eval_texts), 25)])
    one = teacher.tokenize([LATENCY_TEXT], SEQ_LEN)

    rows: list[dict] = []
    runtimes: dict[tuple[str, str], object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            conv = get_converter(fmt)
            for precision in PLAN[fmt]:
                spec = teacher.export_spec(precision, one, stem=f"minilm-{precision}")
                started = time.perf_counter()
                art = conv.lower(teacher.module, spec, Path(tmp) / fmt)
                export_s = time.perf_counter() - started
                runtime = conv.runtime(art, 1)
                n = args.coreml_texts if fmt == "coreml" else args.eval_texts
                inputs = {k: v[:n] for k, v in eval_inputs.items()}
                started = time.perf_counter()
                got = _run_all(runtime, inputs)
                run_s = time.perf_counter() - started
                cos = cosine_rows(reference[:n], got)
                if runtime.measures_latency:
                    runtimes[(fmt, precision)] = runtime
                row = {
                    "format": fmt,
                    "precision": precision,
                    "size_bytes": art.size_bytes(),
                    "size_mb": art.size_bytes() / 1e6,
                    "embedding_mb": None if art.embedding_bytes is None else art.embedding_bytes / 1e6,
                    "cosine_mean": float(cos.mean()),
                    "cosine_min": float(cos.min()),
                    "fidelity_texts": n,
                    "fidelity_runtime": f"{runtime.name} ({runtime.provenance})",
                    "export_seconds": export_s,
                    "fidelity_seconds": run_s,
                    "ops": {k: v for k, v in art.ops.items()
                            if any(s in k for s in ("MatMul", "Gather", "Attention", "DEQUANTIZE", "FULLY_CONNECTED",
                                                    "EMBEDDING_LOOKUP", "constexpr", "linear"))},
                    "notes": art.notes,
                }
                rows.append(row)
                console.print(f"{fmt} {precision}: {row['size_mb']:.2f} MB, cosine mean {row['cosine_mean']:.5f} min "
                              f"{row['cosine_min']:.5f} on {n} texts ({runtime.name}); export {export_s:.0f} s, run {run_s:.0f} s")

        console.print("timing (interleaved rounds, 1 thread, batch 1, seq 128)...")
        medians: dict[tuple[str, str], list[float]] = {key: [] for key in runtimes}
        for _ in range(args.rounds):
            for key, runtime in runtimes.items():
                medians[key].append(time_runs(lambda rt=runtime: rt.run(one), warmup=3, repeats=args.repeats)["median_ms"])

    baseline = {fmt: next(r["size_bytes"] for r in rows if r["format"] == fmt and r["precision"] == PLAN[fmt][0])
                for fmt in {r["format"] for r in rows}}
    for r in rows:
        key = (r["format"], r["precision"])
        r["size_pct_of_baseline"] = 100.0 * r["size_bytes"] / baseline[r["format"]]
        r["baseline"] = PLAN[r["format"]][0]
        r["latency_ms_median"] = float(np.median(medians[key])) if key in medians else None
        r["latency_ms_rounds"] = medians.get(key)

    table = Table(title=f"weight-only precisions on all-MiniLM-L6-v2 — seq {SEQ_LEN}, batch 1, latency at 1 thread")
    for col in ("format", "precision", "size MB", "% of baseline", "cos mean", "cos min", "texts", "latency ms"):
        table.add_column(col, justify="left" if col in ("format", "precision") else "right")
    for r in rows:
        table.add_row(
            r["format"], r["precision"], f"{r['size_mb']:.2f}", f"{r['size_pct_of_baseline']:.1f}% of {r['baseline']}",
            f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.5f}", str(r["fidelity_texts"]),
            "-" if r["latency_ms_median"] is None else f"{r['latency_ms_median']:.1f}",
        )
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "teacher": teacher.name,
        "seq_len": SEQ_LEN,
        "eval_texts": len(eval_texts),
        "split": "edgekit.verify.texts.load_texts(); random.Random(0).shuffle(indices); first N = eval",
        "latency": {"threads": 1, "batch": 1, "rounds": args.rounds, "repeats": args.repeats, "provenance": "measured-host"},
        "coreml_fidelity": "MIL reference interpreter (numpy) on Linux: graph + weights, not device kernels",
        "host": host_description(),
        "rows": rows,
    }, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
