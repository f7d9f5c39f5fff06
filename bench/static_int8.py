"""Static int8 (`int8-static`) on the embedded teacher vs the fp32 artifact of the same format.

For ONNX and TFLite: export fp32 and int8-static (calibrated on the shipped texts that are not held
out), then in each artifact's own runtime on this host: size MB, mean / min cosine vs the PyTorch
teacher on 100 held-out texts (the split of bench/passes.py: `random.Random(0)` shuffle of the
text indices, first 100 = eval, the rest calibrate), median latency at 1 thread, batch 1, seq 128
(rounds interleaved across artifacts so background load hits all alike). Prints a table and
writes JSON (default bench/results/static_int8.json).

    python bench/static_int8.py [--formats onnx,tflite] [--calibration N] [--rounds N] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from converters.base import get_converter
from edgekit.model import load_teacher
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import heldout_split, load_texts

SEQ_LEN = 128
EVAL_TEXTS = 100
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--calibration", type=int, default=128, help="calibration texts (from the non-held-out ones)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "static_int8.json")
    args = parser.parse_args()

    teacher = load_teacher()
    texts = load_texts()
    eval_texts, calib_texts = heldout_split(texts, EVAL_TEXTS)
    eval_inputs = teacher.tokenize(eval_texts, SEQ_LEN)
    calib_inputs = teacher.tokenize(calib_texts, SEQ_LEN)
    one = teacher.tokenize([LATENCY_TEXT], SEQ_LEN)
    reference = np.concatenate([teacher.run({k: v[i : i + 25] for k, v in eval_inputs.items()}) for i in range(0, EVAL_TEXTS, 25)])

    rows, runtimes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            conv = get_converter(fmt)
            for precision in ("fp32", "int8-static"):
                spec = teacher.export_spec(precision, calib_inputs, calibration=args.calibration)
                start = time.perf_counter()
                art = conv.lower(teacher.module, spec, Path(tmp) / f"{fmt}-{precision}")
                lower_s = time.perf_counter() - start
                runtime = conv.runtime(art, threads=1)
                got = np.concatenate(
                    [runtime.run({k: v[i : i + 1] for k, v in eval_inputs.items()})[teacher.output_name] for i in range(EVAL_TEXTS)]
                )
                cos = cosine_rows(reference, got)
                runtimes[(fmt, precision)] = runtime
                rows.append(
                    {
                        "format": fmt,
                        "precision": precision,
                        "size_mb": art.size_bytes() / 1e6,
                        "mean_cosine": float(cos.mean()),
                        "min_cosine": float(cos.min()),
                        "lower_seconds": lower_s,
                        "notes": art.notes,
                        "ops": art.ops,
                    }
                )
        medians: dict[tuple[str, str], list[float]] = {key: [] for key in runtimes}
        for _ in range(args.rounds):
            for key, runtime in runtimes.items():
                medians[key].append(time_runs(lambda rt=runtime: rt.run(one), warmup=3, repeats=args.repeats)["median_ms"])
    for row in rows:
        key = (row["format"], row["precision"])
        row["median_ms"] = float(np.median(medians[key]))
        row["speedup_vs_fp32"] = float(np.median(medians[(row["format"], "fp32")])) / row["median_ms"]

    table = Table(title=f"int8-static on all-MiniLM-L6-v2 — 1 thread, batch 1, seq {SEQ_LEN}, {EVAL_TEXTS} held-out texts")
    for col in ("format", "precision", "size MB", "mean cos", "min cos", "median ms", "speedup vs fp32"):
        table.add_column(col, justify="left" if col in ("format", "precision") else "right")
    for r in rows:
        table.add_row(
            r["format"], r["precision"], f"{r['size_mb']:.1f}", f"{r['mean_cosine']:.4f}", f"{r['min_cosine']:.4f}",
            f"{r['median_ms']:.1f}", f"{r['speedup_vs_fp32']:.2f}x",
        )  # fmt: skip
    Console().print(table)
    for r in rows:
        if r["precision"] != "fp32":
            print(f"{r['format']} notes:")
            for note in r["notes"]:
                print(f"  - {note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "host": host_description(),
                "setup": {
                    "seq_len": SEQ_LEN,
                    "threads": 1,
                    "batch": 1,
                    "eval_texts": EVAL_TEXTS,
                    "calibration_texts": min(args.calibration, len(calib_texts)),
                    "split": "random.Random(0).shuffle of load_texts() indices; first 100 = eval, rest calibrate (bench/passes.py)",
                    "latency": f"median of {args.rounds} interleaved rounds x {args.repeats} runs after 3 warm-up runs",
                },
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
