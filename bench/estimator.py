"""Validate the latency estimator by treating this host as a device.

For every (model size x format x precision x seq len) point: export the artifact (converters
directly, into a temp dir), predict its latency with `estimate_artifact(..., "host", threads)`
and measure it in its real runtime (`get_converter(fmt).runtime(artifact, threads)` +
`time_runs`, batch 1, median after warm-up, real tokenised text). Prints predicted vs measured
with the error per point, the median and max absolute percentage error, and writes JSON
(default bench/results/estimator.json).

No validation point is used for calibration: the estimator is calibrated only on synthetic
micro-benchmarks (see edgekit/verify/host_peaks.py), so every point below is held out.

    python bench/estimator.py [--threads 1] [--seq-lens 32,64,128] [--models tiny,small,teacher]
                              [--repeats 30] [--passes 3] [--use-cache] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import edgekit  # noqa: F401  (offline / quiet environment before transformers loads)
from converters.base import get_converter
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify import host_peaks
from edgekit.verify.estimate import METHOD, estimate_artifact, mape
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import load_texts

#: name -> (hidden, layers, heads) of the seeded random BERTs; "teacher" is the real all-MiniLM-L6-v2 (384, 6, 12).
SIZES = {"tiny": (32, 2, 2), "small": (128, 4, 4), "teacher": None}


def _teacher(name: str, root: Path):
    if SIZES[name] is None:
        return load_teacher()
    hidden, layers, heads = SIZES[name]
    return load_teacher(build_tiny_model_dir(root / name, "bert", "embedding", seed=0, hidden=hidden, layers=layers, heads=heads))


def _export(teacher, fmt: str, precision: str, seq: int, texts: list[str], workdir: Path):
    inputs = teacher.tokenize(texts, seq)
    spec = teacher.export_spec(precision, inputs, calibration=16, stem=f"model-{precision}-{seq}")
    return get_converter(fmt).lower(teacher.module, spec, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="runtime threads for prediction and measurement (default 1)")
    parser.add_argument("--seq-lens", default="32,64,128")
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--passes", type=int, default=3, help="interleaved measurement passes; a point's latency is its lowest pass median")
    parser.add_argument(
        "--use-cache", action="store_true", help="reuse the cached host calibration (default: measure it right before the points)"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "estimator.json")
    args = parser.parse_args()
    seqs = [int(s) for s in args.seq_lens.split(",")]
    formats = args.formats.split(",")
    precisions = args.precisions.split(",")
    texts = load_texts()[:32]
    sentence = texts[:1]

    points = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-est-") as tmp:
        root = Path(tmp)
        # 1. export every artifact (ONNX has a dynamic sequence axis: one export serves every seq len)
        for model in args.models.split(","):
            teacher = _teacher(model, root)
            params = teacher.parameter_counts()
            for fmt in formats:
                for precision in precisions:
                    onnx_art = None
                    for seq in seqs:
                        workdir = root / f"{model}-{fmt}-{precision}-{seq}"
                        if fmt == "onnx":
                            onnx_art = onnx_art or _export(teacher, fmt, precision, seqs[-1], texts, workdir)
                            art = onnx_art
                        else:
                            art = _export(teacher, fmt, precision, seq, texts, workdir)
                        one = teacher.tokenize(sentence, seq)
                        points.append(
                            {
                                "model": model,
                                "parameters": params["total"],
                                "non_embedding_parameters": params["non_embedding"],
                                "format": fmt,
                                "precision": precision,
                                "seq_len": seq,
                                "threads": args.threads,
                                "_artifact": art,
                                "_feeds": {k: v for k, v in one.items() if k in {i.name for i in art.inputs}},
                            }
                        )
            print(f"exported {model}", flush=True)

        # 2. calibrate this host (micro-benchmarks only), right before the measurements
        cal_info = {}
        for fmt in formats:
            runtime = "onnxruntime" if fmt == "onnx" else "litert"
            started = time.perf_counter()
            cal = host_peaks.host_calibration(runtime, args.threads, force=not args.use_cache)
            cal_info[runtime] = {
                "summary": host_peaks.describe(cal),
                "wall_s": round(time.perf_counter() - started, 1),
                "measured_in_s": cal["seconds"],
                "host": cal["host"],
                "params": cal["params"],
                "micro": cal["micro"],
                "fit_rms_log_error": cal["fit_rms_log_error"],
            }
            print(f"calibration {cal_info[runtime]['summary']}", flush=True)

        # 3. predict, then measure in interleaved passes (lowest pass median: robust to other jobs on a shared host)
        runtimes = {}
        for p in points:
            art = p["_artifact"]
            est = estimate_artifact(art.path, p["format"], p["precision"], "host", args.threads, p["seq_len"])
            p.update(
                gflops=est.flops / 1e9,
                predicted_ms=est.total_ms,
                predicted_by_op_type_ms=est.by_op_type,
                top_ops=[{"name": o.name, "op_type": o.op_type, "ms": o.ms, "bound": o.bound} for o in est.top_ops(3)],
                passes_median_ms=[],
                passes_p90_ms=[],
            )
            if id(art) not in runtimes:
                runtimes[id(art)] = get_converter(p["format"]).runtime(art, args.threads)
            p["runtime"] = f"{runtimes[id(art)].name} {runtimes[id(art)].version}"
        for _ in range(args.passes):
            for p in points:
                runtime = runtimes[id(p["_artifact"])]
                fn = lambda r=runtime, f=p["_feeds"]: r.run(f)  # noqa: E731
                lat = time_runs(fn, repeats=args.repeats)
                p["passes_median_ms"].append(lat["median_ms"])
                p["passes_p90_ms"].append(lat["p90_ms"])
                if args.threads == 1:  # the runtimes compute on the calling thread: its CPU time excludes time slicing
                    p.setdefault("passes_cpu_median_ms", []).append(host_peaks.thread_cpu_median_s(fn, args.repeats) * 1e3)
        for p in points:
            p["measured_ms"] = min(p["passes_median_ms"])
            p["error_pct"] = (p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"] * 100
            if "passes_cpu_median_ms" in p:
                p["measured_cpu_ms"] = min(p["passes_cpu_median_ms"])
                p["error_vs_cpu_pct"] = (p["predicted_ms"] - p["measured_cpu_ms"]) / p["measured_cpu_ms"] * 100
            del p["_artifact"], p["_feeds"]
        runtimes.clear()

    med, worst = mape([(p["predicted_ms"], p["measured_ms"]) for p in points])
    cpu_med, cpu_worst = mape([(p["predicted_ms"], p["measured_cpu_ms"]) for p in points if "measured_cpu_ms" in p])
    groups = {}
    for key in ("model", "format", "precision"):
        for value in dict.fromkeys(p[key] for p in points):
            sel = [(p["predicted_ms"], p["measured_ms"]) for p in points if p[key] == value]
            groups[f"{key}={value}"] = dict(zip(("median_abs_error_pct", "max_abs_error_pct"), mape(sel), strict=True))
    _print_table(points, med, worst, groups, args.threads, (cpu_med, cpu_worst))
    out = {
        "command": "python " + " ".join(sys.argv),
        "host": host_description(),
        "threads": args.threads,
        "batch": 1,
        "repeats": args.repeats,
        "method": METHOD,
        "measurement": f"wall-clock median of {args.repeats} runs after warm-up (time_runs), in {args.passes} interleaved passes; "
        "the lowest "
        "pass median is kept. At 1 thread also the calling thread's CPU time (excludes time slicing by other jobs on this shared host)",
        "validation": "host treated as the device; calibration uses only synthetic micro-benchmarks, so every point is held out",
        "calibration": cal_info,
        "points": points,
        "summary": {
            "n": len(points),
            "median_abs_error_pct": med,
            "max_abs_error_pct": worst,
            "vs_thread_cpu_time": {"median_abs_error_pct": cpu_med, "max_abs_error_pct": cpu_worst},
            "by_group": groups,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {args.json}")


def _print_table(points, med, worst, groups, threads, cpu) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"estimator vs measured host latency (batch 1, {threads} thread(s), median of repeated runs)")
    for col in ("model", "params M", "format", "prec", "seq", "GFLOP", "predicted ms", "measured ms", "error %", "cpu ms", "err vs cpu %"):
        table.add_column(col, justify="left" if col in ("model", "format", "prec") else "right")
    for p in points:
        table.add_row(
            p["model"],
            f"{p['parameters'] / 1e6:.1f}",
            p["format"],
            p["precision"],
            str(p["seq_len"]),
            f"{p['gflops']:.3f}",
            f"{p['predicted_ms']:.3f}",
            f"{p['measured_ms']:.3f}",
            f"{p['error_pct']:+.1f}",
            f"{p['measured_cpu_ms']:.3f}" if "measured_cpu_ms" in p else "-",
            f"{p['error_vs_cpu_pct']:+.1f}" if "error_vs_cpu_pct" in p else "-",
        )
    console = Console(width=200)
    console.print(table)
    console.print(f"points: {len(points)}   median |error|: {med:.1f}%   max |error|: {worst:.1f}%   (wall-clock, lowest pass median)")
    if cpu[0] == cpu[0]:
        console.print(f"vs CPU time of the calling thread: median |error| {cpu[0]:.1f}%   max {cpu[1]:.1f}%")
    for k, v in groups.items():
        console.print(f"  {k:18s} median |error| {v['median_abs_error_pct']:5.1f}%   max {v['max_abs_error_pct']:5.1f}%")


if __name__ == "__main__":
    main()
