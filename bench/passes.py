"""Compression passes on the embedded teacher, measured in the exported artifacts.

For each pass setting: apply it to a copy of all-MiniLM-L6-v2, export ONNX fp32 (and TFLite fp32 where
asked); for each quantization (fp16, int8 dynamic / static, weight-only int8 / int4) export the teacher at that
precision in ONNX and TFLite (calibrated on the calibration split); then measure in each artifact's own runtime on this host:
size MB with / without embedding tables, % of the teacher's size (same format), latency speedup vs
the fp32 ONNX teacher (1 thread, batch 1, seq 128, median of repeated runs after warm-up, rounds
interleaved across models so background load hits all of them alike), and mean / min cosine vs the
PyTorch teacher on held-out texts (passes calibrate on the other shipped texts, never on these).
Prints a table and writes JSON (default bench/results/passes.json).

    python bench/passes.py [--eval-texts N] [--rounds N] [--repeats N] [--tflite all|some|none] [--only REGEX] [--json PATH]
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
from edgekit.model import load_teacher
from edgekit.passes import PassContext, get_pass
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import heldout_split, load_texts

SEQ_LEN = 128
#: (label, [(pass, options), ...], export TFLite too when --tflite=some)
SETTINGS: list[tuple[str, list[tuple[str, dict]], bool]] = [
    ("teacher", [], True),
    ("prune-ffn ratio=0.5", [("prune-ffn", {"ratio": 0.5})], True),
    ("prune-layers keep=3", [("prune-layers", {"keep": 3})], True),
    ("prune-heads ratio=0.5", [("prune-heads", {"ratio": 0.5})], False),
    ("svd energy=0.9", [("svd", {"energy": 0.9})], False),
    ("svd energy=0.99 whiten", [("svd", {"energy": 0.99, "whiten": True})], False),
    ("embed-factorize rank=128", [("embed-factorize", {"rank": 128})], False),
    ("prune-weights sparsity=0.5", [("prune-weights", {"sparsity": 0.5})], False),
    ("palettize bits=4 (encoder)", [("palettize", {"bits": 4})], False),
    ("palettize bits=4 group=16 (encoder)", [("palettize", {"bits": 4, "granularity": "group", "group_size": 16})], False),
    ("share-layers every=2", [("share-layers", {"every": 2})], True),
    ("vocab-prune (calibration texts)", [("vocab-prune", {})], True),
    ("token-skip keep=0.5@2", [("token-skip", {"keep": "0.5@2"})], True),
]
#: quantization, lowered natively by each converter: (label, precision); ONNX and TFLite, calibrated on the calibration split
QUANTIZATION: list[tuple[str, str]] = [
    ("fp16", "fp16"),
    ("int8 dynamic", "int8"),
    ("int8-static", "int8-static"),
    ("int8-weights", "int8-weights"),
    ("int4-weights", "int4-weights"),
]
#: Core ML rows of the quantization settings (size + weight round-trip); Core ML has no int8 activations here
COREML_QUANTIZATION = {"int8-weights", "int4-weights"}
#: settings whose Core ML fp16 export is also written (size + weight round-trip; prediction needs macOS)
COREML = {"teacher", "share-layers every=2", "prune-weights sparsity=0.5", "palettize bits=4 (encoder)", "vocab-prune (calibration texts)"}
_COUNTED_OPS = ("MatMul", "Gemm", "FULLY_CONNECTED")
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."


def _run_all(runtime, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(inputs["input_ids"])
    rows = [next(iter(runtime.run({k: v[i : i + 1] for k, v in inputs.items()}).values())) for i in range(n)]
    return np.concatenate(rows).astype(np.float32)


def _coreml_row(label: str, model, teacher, one: dict[str, np.ndarray], out: Path, precision: str = "fp16") -> dict:
    """Core ML (iOS16, or what the precision needs): size on disk and the weight round-trip against the torch model
    (prediction needs macOS)."""
    from converters.coreml import weight_roundtrip

    art = get_converter("coreml").lower(model, teacher.export_spec(precision, one, deployment_target="iOS16"), out)
    size, emb = art.size_bytes(), art.embedding_bytes
    return {
        "method": label,
        "format": "coreml",
        "precision": precision,
        "size_mb": size / 1e6,
        "size_without_embeddings_mb": None if emb is None else (size - emb) / 1e6,
        "weight_roundtrip": weight_roundtrip(art, model).summary(),
        "ops": {k: v for k, v in art.ops.items() if k.startswith("constexpr")},
        "notes": art.notes,
        "fidelity": "not run: Core ML prediction needs macOS",
    }


def _markdown(rows: list[dict], n_eval: int) -> str:
    lines = [
        f"1 thread, seq {SEQ_LEN}, batch 1; cosine vs the PyTorch teacher on {n_eval} held-out texts; no fine-tuning",
        "",
        "| method | format | precision | size MB | w/o emb MB | % of teacher | latency ms | speedup vs ONNX fp32 | cos mean | cos min |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        no_emb = "-" if r["size_without_embeddings_mb"] is None else f"{r['size_without_embeddings_mb']:.1f}"
        lines.append(
            f"| {r['method']} | {r['format']} | {r['precision']} | {r['size_mb']:.1f} | {no_emb} | {r['size_pct_of_teacher']:.0f}% | "
            f"{r['latency_ms_median']:.1f} | {r['speedup_vs_onnx_teacher']:.2f}x | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-texts", type=int, default=100, help="held-out texts for fidelity (the rest calibrate the passes)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds per model")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per round (after 3 warm-up runs)")
    parser.add_argument("--tflite", choices=["all", "some", "none"], default="some", help="which settings also export TFLite fp32")
    parser.add_argument("--coreml", action=argparse.BooleanOptionalAction, default=True, help="Core ML fp16 size + weight round-trip")
    parser.add_argument("--only", default=None, help="regular expression: run only the settings whose label matches (teacher always runs)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "passes.json")
    args = parser.parse_args()
    console = Console(width=200)
    torch.set_num_threads(1)

    teacher = load_teacher()
    texts = load_texts()
    eval_texts, calib_texts = heldout_split(texts, args.eval_texts)
    eval_inputs = teacher.tokenize(eval_texts, SEQ_LEN)
    reference = np.concatenate([teacher.run({k: v[i : i + 25] for k, v in eval_inputs.items()}) for i in range(0, len(eval_texts), 25)])
    one = teacher.tokenize([LATENCY_TEXT], SEQ_LEN)
    base_params = sum(p.numel() for p in teacher.module.parameters())

    rows: list[dict] = []
    coreml_rows: list[dict] = []
    runtimes: dict[tuple[str, str], object] = {}
    latency_inputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    calib = teacher.tokenize(calib_texts[:64], SEQ_LEN)
    calibration = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(len(calib["input_ids"]))]
    settings = [(label, steps, tfl, "fp32") for label, steps, tfl in SETTINGS] + [(label, [], True, prec) for label, prec in QUANTIZATION]
    if args.only:
        import re

        settings = [s for s in settings if s[0] == "teacher" or re.search(args.only, s[0])]
    with tempfile.TemporaryDirectory() as tmp:
        for label, steps, some_tflite, precision in settings:
            console.print(f"[bold]{label}[/bold]")
            model = copy.deepcopy(teacher.module)
            ctx = PassContext(teacher=teacher, texts=calib_texts, profile=None, seq_len=SEQ_LEN)
            started = time.perf_counter()
            for name, options in steps:
                model = get_pass(name, options).apply(model, ctx)
            pass_s = time.perf_counter() - started
            model.eval()
            params = sum(p.numel() for p in model.parameters())
            # a pass that rewrote the vocabulary ships its own tokenizer: the student reads its own ids
            student_inputs, student_one = eval_inputs, one
            if ctx.tokenizer is not None:
                from dataclasses import replace

                shipped = replace(teacher, tokenizer=ctx.tokenizer)
                student_inputs, student_one = shipped.tokenize(eval_texts, SEQ_LEN), shipped.tokenize([LATENCY_TEXT], SEQ_LEN)
            with torch.no_grad():
                torch_out = np.concatenate(
                    [
                        model(**{k: torch.from_numpy(v[i : i + 25]) for k, v in student_inputs.items()}).numpy()
                        for i in range(0, len(eval_texts), 25)
                    ]
                )
            torch_cos = cosine_rows(reference, torch_out)
            formats = ["onnx"] + (["tflite"] if args.tflite == "all" or (args.tflite == "some" and some_tflite) else [])
            for fmt in formats:
                conv = get_converter(fmt)
                spec = teacher.export_spec(precision, student_one)
                spec.calibration_inputs = calibration
                started = time.perf_counter()
                art = conv.lower(model, spec, Path(tmp) / f"{label.replace(' ', '_')}-{fmt}")
                export_s = time.perf_counter() - started
                runtime = conv.runtime(art, 1)
                got = _run_all(runtime, student_inputs)
                cos = cosine_rows(reference, got)
                runtimes[(label, fmt)] = runtime
                latency_inputs[(label, fmt)] = student_one
                size = art.size_bytes()
                emb = art.embedding_bytes
                rows.append(
                    {
                        "method": label,
                        "passes": [{"name": n, "options": o} for n, o in steps],
                        "format": fmt,
                        "precision": precision,
                        "size_mb": size / 1e6,
                        "size_without_embeddings_mb": None if emb is None else (size - emb) / 1e6,
                        "parameters": params,
                        "parameters_pct_of_teacher": 100.0 * params / base_params,
                        "cosine_mean": float(cos.mean()),
                        "cosine_min": float(cos.min()),
                        "torch_cosine_mean": float(torch_cos.mean()),
                        "artifact_vs_torch_min_cosine": float(cosine_rows(torch_out, got).min()),
                        "pass_seconds": pass_s,
                        "export_seconds": export_s,
                        "ops": {k: v for k, v in art.ops.items() if "Attention" in k or "Embed" in k or k in _COUNTED_OPS},
                        "records": ctx.records if fmt == "onnx" else None,
                    }
                )
                console.print(f"  {fmt}: {size / 1e6:.1f} MB, mean cosine {cos.mean():.4f}, exported in {export_s:.1f} s")
            if args.coreml and (label in COREML or label in COREML_QUANTIZATION):
                out = Path(tmp) / f"{label.replace(' ', '_')}-coreml"
                coreml_rows.append(_coreml_row(label, model, teacher, student_one, out, "fp16" if precision == "fp32" else precision))
                console.print(f"  coreml fp16: {coreml_rows[-1]['size_mb']:.1f} MB, {coreml_rows[-1]['weight_roundtrip']}")

        # Latency: interleaved rounds over every artifact, 1 thread, [1, 128] input.
        console.print("timing (interleaved rounds)...")
        medians: dict[tuple[str, str], list[float]] = {key: [] for key in runtimes}
        for _ in range(args.rounds):
            for key, runtime in runtimes.items():
                feed = latency_inputs[key]
                medians[key].append(time_runs(lambda rt=runtime, feed=feed: rt.run(feed), warmup=3, repeats=args.repeats)["median_ms"])
    latency = {key: float(np.median(v)) for key, v in medians.items()}
    onnx_teacher = latency[("teacher", "onnx")]
    sizes = {r["format"]: r["size_mb"] for r in rows if r["method"] == "teacher"}
    for r in rows:
        key = (r["method"], r["format"])
        r["latency_ms_median"] = latency[key]
        r["latency_ms_rounds"] = medians[key]
        r["speedup_vs_onnx_teacher"] = onnx_teacher / latency[key]
        r["size_pct_of_teacher"] = 100.0 * r["size_mb"] / sizes[r["format"]]

    table = Table(title=f"passes on all-MiniLM-L6-v2 — 1 thread, seq {SEQ_LEN}, {len(eval_texts)} held-out texts")
    for col in ("method", "format", "precision", "size MB", "w/o emb MB", "% teacher", "latency ms", "speedup", "cos mean", "cos min"):
        table.add_column(col, justify="left" if col in ("method", "format") else "right")
    for r in rows:
        table.add_row(
            r["method"],
            r["format"],
            r["precision"],
            f"{r['size_mb']:.1f}",
            "-" if r["size_without_embeddings_mb"] is None else f"{r['size_without_embeddings_mb']:.1f}",
            f"{r['size_pct_of_teacher']:.0f}%",
            f"{r['latency_ms_median']:.1f}",
            f"{r['speedup_vs_onnx_teacher']:.2f}x",
            f"{r['cosine_mean']:.4f}",
            f"{r['cosine_min']:.4f}",
        )
    console.print(table)
    print(_markdown(rows, len(eval_texts)))
    if coreml_rows:
        base_coreml = next((r["size_mb"] for r in coreml_rows if r["method"] == "teacher"), None)
        print("\n| method | Core ML precision | MB | without embeddings MB | % of fp16 teacher | weight round-trip |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
        for r in coreml_rows:
            r["size_pct_of_teacher"] = None if base_coreml is None else 100.0 * r["size_mb"] / base_coreml
            pct = "-" if r["size_pct_of_teacher"] is None else f"{r['size_pct_of_teacher']:.0f}%"
            no_emb = "-" if r["size_without_embeddings_mb"] is None else f"{r['size_without_embeddings_mb']:.1f}"
            print(f"| {r['method']} | {r['precision']} | {r['size_mb']:.1f} | {no_emb} | {pct} | {r['weight_roundtrip']} |")
    result = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher.name,
        "seq_len": SEQ_LEN,
        "threads": 1,
        "latency": f"batch 1, '{LATENCY_TEXT}' padded to {SEQ_LEN}; per model the median of {args.rounds} interleaved rounds, "
        f"each the median of {args.repeats} runs after 3 warm-up runs; measured-host",
        "fidelity": f"cosine vs the PyTorch teacher on {len(eval_texts)} held-out shipped texts (seeded split); "
        f"passes calibrated on the other {len(calib_texts)}; no fine-tuning",
        "host": host_description() | {"load_average": os.getloadavg()},
        "rows": rows,
        "coreml": coreml_rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
