"""Dynamic inference on the embedded teacher, measured in the exported ONNX and TFLite artifacts.

Early exit (`early-exit:layers=2,4`, heads trained on the first shipped texts, never on the
evaluation texts): a curve threshold -> mean / min cosine vs the PyTorch teacher, exit rate per
layer, mean host latency per text; plus the forced paths (exit after layer 2 / full depth) as the
cost of each branch. ONNX sweeps the threshold through the graph's `exit_threshold` input; TFLite
bakes it into the graph, so every TFLite point is its own export.

Token skipping (`token-skip:keep=R@2`): keep ratio -> cosine, real tokens kept, latency. The
sample texts are short (median ~15 tokens in 128 positions), so ratio 0.5 keeps all of their real
tokens; the `long` rows use texts of 100+ tokens (sample texts joined) where tokens really go.

All latencies: 1 thread, batch 1, seq 128, fp32, median of repeated runs after warm-up (per-text
curves: mean over the evaluation texts of the median of `--repeats` runs each).

    python bench/dynamic.py [--eval-texts N] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from converters.base import EXIT_LAYER, get_converter
from edgekit.model import load_teacher
from edgekit.passes import PassContext, get_pass
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import load_texts

SEQ_LEN = 128
EXITS = [2, 4]
ONNX_THRESHOLDS = [0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.01]
TFLITE_THRESHOLDS = [0.0, 0.8, 0.9, 1.01]
KEEP_RATIOS = [1.0, 0.75, 0.5, 0.25]


def _per_text(runtime, inputs: dict[str, np.ndarray], name: str, repeats: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Outputs, exit layers and mean per-text latency (median of `repeats` runs per text after one warm-up)."""
    outs, layers, times = [], [], []
    for i in range(len(inputs["input_ids"])):
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        res = runtime.run(row)
        outs.append(res[name])
        if EXIT_LAYER in res:
            layers.append(int(np.asarray(res[EXIT_LAYER]).reshape(-1)[0]))
        times.append(time_runs(lambda row=row: runtime.run(row), repeats=repeats, warmup=1)["median_ms"])
    return np.concatenate(outs), (np.array(layers) if layers else None), float(np.mean(times))


class _WithThreshold:
    """An ORT runtime that feeds `exit_threshold` (the ONNX graph input with a default)."""

    def __init__(self, runtime, threshold: float) -> None:
        self.runtime, self.threshold = runtime, threshold

    def run(self, inputs):
        sess = self.runtime._session
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in inputs.items()} | {"exit_threshold": np.array([self.threshold], np.float32)}
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))


def _export(fmt: str, teacher, model, inputs, outdir: Path, stem: str, dynamic: bool):
    spec = teacher.export_spec("fp32", inputs, calibration=16, stem=stem)
    if dynamic:
        spec.output_names = [teacher.output_name, EXIT_LAYER]
    conv = get_converter(fmt)
    art = conv.lower(model, spec, outdir)
    return conv.runtime(art, 1)


def _rate(layers: np.ndarray, n_layers: int) -> str:
    return " ".join(f"L{x}:{100 * np.mean(layers == x):.0f}%" for x in EXITS + [n_layers])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-texts", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=Path("bench/results/dynamic.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = load_teacher(None)
    texts = load_texts()
    train, evaluation = texts[: -args.eval_texts], texts[-args.eval_texts :]
    inputs = teacher.tokenize(evaluation, SEQ_LEN)
    reference = teacher.run(inputs)
    long_texts = [" ".join(evaluation[i : i + 8]) for i in range(0, 8 * 12, 8)]
    long_inputs = teacher.tokenize(long_texts, SEQ_LEN)
    long_reference = teacher.run(long_inputs)
    console = Console(width=160)
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-dynamic-"))

    console.print(f"training exit heads on {len(train)} texts, evaluating on {len(evaluation)} held-out texts")
    ctx = PassContext(teacher=teacher, texts=train, profile=None, seq_len=SEQ_LEN)
    ee = get_pass("early-exit", {"layers": EXITS, "threshold": 1.01}).apply(copy.deepcopy(teacher.module), ctx)
    record = ctx.records[-1]
    n_layers = ee.num_layers

    base = {}
    for fmt in ("onnx", "tflite"):
        rt = _export(fmt, teacher, teacher.module, inputs, work / fmt, "teacher", False)
        one = {k: v[:1] for k, v in inputs.items()}
        base[fmt] = time_runs(lambda rt=rt, one=one: rt.run(one), repeats=30)["median_ms"]
        rows.append({"kind": "teacher", "format": fmt, "setting": "full depth, no skipping", "latency_first_text_ms": base[fmt]})

    # forced paths: the cost of each branch on the same text
    for fmt, thresholds in (("onnx", ONNX_THRESHOLDS), ("tflite", TFLITE_THRESHOLDS)):
        forced = {}
        for label, thr in (("exit after layer 2 (forced)", 0.0), ("full depth through the If chain (forced)", 1.01)):
            ee.threshold.fill_(thr)
            rt = _export(fmt, teacher, ee, inputs, work / f"{fmt}-forced-{thr}", f"ee-{thr}", True)
            if fmt == "onnx":
                rt = _WithThreshold(rt, thr)
            one = {k: v[:1] for k, v in inputs.items()}
            forced[label] = time_runs(lambda rt=rt, one=one: rt.run(one), repeats=30)["median_ms"]
        ratio = forced["exit after layer 2 (forced)"] / forced["full depth through the If chain (forced)"]
        for label, ms in forced.items():
            rows.append({"kind": "early-exit", "format": fmt, "setting": label, "latency_first_text_ms": ms, "vs_full_depth": ms / forced[
                "full depth through the If chain (forced)"]})  # fmt: skip
        console.print(f"{fmt}: exit after layer 2 costs {ratio:.2f}x the full-depth path")
        # the threshold curve
        if fmt == "onnx":
            ee.threshold.fill_(1.01)
            onnx_rt = _export(fmt, teacher, ee, inputs, work / "onnx-curve", "ee-curve", True)
        for thr in thresholds:
            if fmt == "onnx":
                rt = _WithThreshold(onnx_rt, thr)
            else:
                ee.threshold.fill_(thr)
                rt = _export(fmt, teacher, ee, inputs, work / f"tflite-{thr}", f"ee-{thr}", True)
            outs, layers, ms = _per_text(rt, inputs, teacher.output_name, args.repeats)
            cos = cosine_rows(outs, reference)
            rows.append(
                {
                    "kind": "early-exit",
                    "format": fmt,
                    "setting": f"confidence > {thr:g}",
                    "threshold": thr,
                    "cosine_mean": float(cos.mean()),
                    "cosine_min": float(cos.min()),
                    "exit_rate": _rate(layers, n_layers),
                    "mean_layers": float(layers.mean()),
                    "mean_latency_ms": ms,
                }
            )
            console.print(f"  {fmt} thr {thr:g}: cos {cos.mean():.4f} {_rate(layers, n_layers)} {ms:.1f} ms")

    for fmt in ("onnx", "tflite"):
        for ratio in KEEP_RATIOS:
            if ratio == 1.0:
                model = teacher.module
            else:
                model = get_pass("token-skip", {"keep": f"{ratio}@2"}).apply(
                    copy.deepcopy(teacher.module), PassContext(teacher=teacher, texts=[], profile=None, seq_len=SEQ_LEN)
                )
            rt = _export(fmt, teacher, model, inputs, work / f"{fmt}-skip-{ratio}", f"skip-{ratio}", False)
            for label, feed, ref in (("sample texts", inputs, reference), ("long texts (100+ tokens)", long_inputs, long_reference)):
                outs, _, ms = _per_text(rt, feed, teacher.output_name, args.repeats)
                cos = cosine_rows(outs, ref)
                real = feed["attention_mask"].sum(1)
                kept = np.minimum(real, int(np.ceil(ratio * SEQ_LEN))) / real
                rows.append(
                    {
                        "kind": "token-skip",
                        "format": fmt,
                        "setting": f"keep {ratio:g} after layer 2, {label}",
                        "keep": ratio,
                        "cosine_mean": float(cos.mean()),
                        "cosine_min": float(cos.min()),
                        "real_tokens_kept": float(kept.mean()),
                        "mean_latency_ms": ms,
                    }
                )
                console.print(f"  {fmt} keep {ratio}: {label} cos {cos.mean():.4f} kept {kept.mean():.2f} {ms:.1f} ms")
    # speedups against the same format's plain teacher on the same texts
    for fmt in ("onnx", "tflite"):
        for group in ("sample texts", "long texts (100+ tokens)"):
            same = [r for r in rows if r["kind"] == "token-skip" and r["format"] == fmt and group in r["setting"]]
            ref_ms = next(r["mean_latency_ms"] for r in same if r["keep"] == 1.0)
            for r in same:
                r["speedup"] = ref_ms / r["mean_latency_ms"]
        full = next(r["mean_latency_ms"] for r in rows if r["kind"] == "early-exit" and r["format"] == fmt and r.get("threshold") == 1.01)
        for r in rows:
            if r["kind"] == "early-exit" and r["format"] == fmt and "mean_latency_ms" in r:
                r["speedup"] = full / r["mean_latency_ms"]

    table = Table(title="Dynamic inference on all-MiniLM-L6-v2 (fp32, 1 thread, seq 128, measured on host)")
    for col in ("format", "kind", "setting", "mean cos", "min cos", "exits / tokens kept", "latency ms", "speedup"):
        table.add_column(col, justify="left" if col in ("format", "kind", "setting", "exits / tokens kept") else "right")
    for r in rows:
        ms = r.get("mean_latency_ms", r.get("latency_first_text_ms"))
        table.add_row(
            r["format"], r["kind"], r["setting"],
            f"{r['cosine_mean']:.4f}" if "cosine_mean" in r else "-",
            f"{r['cosine_min']:.4f}" if "cosine_min" in r else "-",
            r.get("exit_rate") or (f"{100 * r['real_tokens_kept']:.0f}% real tokens" if "real_tokens_kept" in r else "-"),
            f"{ms:.2f}",
            f"{r['speedup']:.2f}x" if "speedup" in r else (f"{r['vs_full_depth']:.2f}x of full" if "vs_full_depth" in r else "-"),
        )  # fmt: skip
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "host": host_description(),
                "threads": 1,
                "seq_len": SEQ_LEN,
                "eval_texts": len(evaluation),
                "early_exit_training": {k: v for k, v in record.items() if k != "config"},
                "rows": rows,
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
