"""edgekit's int8 ONNX against Optimum's, run as Optimum's users run it, in one process on the same texts.

Optimum: `optimum-cli export onnx --task feature-extraction` then `optimum-cli onnxruntime quantize` with
the preset for this CPU (avx512_vnni / avx512 / avx2 / arm64), per-tensor and `--per_channel`.
edgekit: the ONNX converter's int8 (fused graph, smoothed activations, calibrated on texts that are
not evaluated). Both fp32 exports are timed too. Every model gets the same tokenised inputs (seq 128,
padded, batch 1), fidelity is the mean / min cosine of the sentence embedding vs the PyTorch teacher
on held-out texts, latency the median over interleaved rounds at 1 thread after warm-up.
Prints a table with the ratios to Optimum's best int8 (highest mean cosine) and the goals
(edgekit int8: higher mean cosine, <= 1.0x size, <= 0.9x latency); writes JSON.

    python bench/vs_optimum.py [--eval-texts 100] [--rounds 7] [--repeats 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from converters.base import get_converter
from edgekit.model import default_teacher_dir, load_teacher
from edgekit.verify.fidelity import cosine_rows
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import heldout_split, load_texts

SEQ_LEN = 128
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."
OPTIMUM_OUTPUT = "sentence_embedding"


def optimum_preset() -> str:
    """The `optimum-cli onnxruntime quantize` preset flag for this CPU."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "--arm64"
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    if "avx512_vnni" in flags:
        return "--avx512_vnni"
    if "avx512" in flags:
        return "--avx512"
    return "--avx2"


def _optimum_cli(*args: str) -> float:
    """Run optimum-cli; TensorFlow is installed next to torch here, so tell transformers to leave it alone."""
    env = dict(os.environ, USE_TF="0", USE_TORCH="1", TF_CPP_MIN_LOG_LEVEL="3")
    cli = [sys.executable, "-m", "optimum.commands.optimum_cli", *args]
    started = time.perf_counter()
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"optimum-cli {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


class _Session:
    def __init__(self, path: Path, output: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.output = output

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], {n: inputs[n].astype(np.int64) for n in self.names})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-texts", type=int, default=100, help="held-out texts for fidelity (the rest calibrate edgekit)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds per model")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per round (after 3 warm-up runs)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "vs_optimum.json")
    args = parser.parse_args()
    console = Console(width=200)
    torch.set_num_threads(1)

    teacher = load_teacher()
    texts = load_texts()
    eval_texts, calib_texts = heldout_split(texts, args.eval_texts)
    eval_inputs = teacher.tokenize(eval_texts, SEQ_LEN)
    reference = teacher.run(eval_inputs)
    one = teacher.tokenize([LATENCY_TEXT], SEQ_LEN)
    preset = optimum_preset()

    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        console.print("optimum-cli export onnx ...")
        teacher_dir = str(default_teacher_dir())
        seconds = _optimum_cli("export", "onnx", "--model", teacher_dir, "--task", "feature-extraction", str(tmp_path / "opt"))
        models["optimum fp32"] = {"tool": "optimum", "path": tmp_path / "opt" / "model.onnx", "output": OPTIMUM_OUTPUT, "seconds": seconds}
        for label, extra in (("per-tensor", []), ("per-channel", ["--per_channel"])):
            console.print(f"optimum-cli onnxruntime quantize {preset} {' '.join(extra)} ...")
            out = tmp_path / f"opt-{label}"
            seconds = _optimum_cli("onnxruntime", "quantize", "--onnx_model", str(tmp_path / "opt"), preset, *extra, "-o", str(out))
            models[f"optimum int8 {preset[2:]} {label}"] = {
                "tool": "optimum",
                "path": out / "model_quantized.onnx",
                "output": OPTIMUM_OUTPUT,
                "seconds": seconds,
                "int8": True,
            }
        conv = get_converter("onnx")
        calib = teacher.tokenize(calib_texts[:64], SEQ_LEN)
        for precision in ("fp32", "int8"):
            console.print(f"edgekit onnx {precision} ...")
            spec = teacher.export_spec(precision, one)
            spec.calibration_inputs = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(len(calib["input_ids"]))]
            started = time.perf_counter()
            art = conv.lower(teacher.module, spec, tmp_path / "edgekit")
            models[f"edgekit {precision}"] = {
                "tool": "edgekit",
                "path": art.path,
                "output": teacher.output_name,
                "seconds": time.perf_counter() - started,
                "int8": precision == "int8",
                "notes": art.notes,
            }

        sessions = {label: _Session(m["path"], m["output"]) for label, m in models.items()}
        for label, m in models.items():
            got = np.concatenate([sessions[label].run({k: v[i : i + 1] for k, v in eval_inputs.items()}) for i in range(len(eval_texts))])
            cos = cosine_rows(reference, got.reshape(len(eval_texts), -1))
            m.update(size_mb=m["path"].stat().st_size / 1e6, cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
            console.print(f"  {label}: {m['size_mb']:.2f} MB, mean cosine {m['cosine_mean']:.5f}")
        console.print("timing (interleaved rounds, 1 thread)...")
        medians: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(args.rounds):
            for label, session in sessions.items():
                medians[label].append(time_runs(lambda s=session: s.run(one), warmup=3, repeats=args.repeats)["median_ms"])
        for label, m in models.items():
            m["latency_ms_median"] = float(np.median(medians[label]))
            m["path"] = m["path"].name

    best = max((label for label, m in models.items() if m["tool"] == "optimum" and m.get("int8")), key=lambda k: models[k]["cosine_mean"])
    ours = models["edgekit int8"]
    for m in models.values():
        m["size_ratio_vs_optimum_best_int8"] = m["size_mb"] / models[best]["size_mb"]
        m["latency_ratio_vs_optimum_best_int8"] = m["latency_ms_median"] / models[best]["latency_ms_median"]
    goals = {
        "fidelity: edgekit int8 mean cosine > optimum best int8": ours["cosine_mean"] > models[best]["cosine_mean"],
        "size: edgekit int8 <= 1.0x optimum best int8": ours["size_ratio_vs_optimum_best_int8"] <= 1.0,
        "latency: edgekit int8 <= 0.9x optimum best int8": ours["latency_ratio_vs_optimum_best_int8"] <= 0.9,
    }

    title = f"int8 ONNX, edgekit vs Optimum — {len(eval_texts)} held-out texts, seq {SEQ_LEN}, batch 1, 1 thread, measured on host"
    table = Table(title=title)
    for col in ("model", "size MB", "x size", "cos mean", "cos min", "median ms", "x latency"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, m in models.items():
        table.add_row(
            label + (" (best Optimum int8)" if label == best else ""),
            f"{m['size_mb']:.2f}",
            f"{m['size_ratio_vs_optimum_best_int8']:.3f}",
            f"{m['cosine_mean']:.5f}",
            f"{m['cosine_min']:.5f}",
            f"{m['latency_ms_median']:.2f}",
            f"{m['latency_ratio_vs_optimum_best_int8']:.3f}",
        )
    console.print(table)
    for goal, ok in goals.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {goal}")
    for note in ours["notes"]:
        console.print(f"  edgekit int8: {note}")

    from importlib.metadata import version

    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": host_description(),
        "threads": 1,
        "seq_len": SEQ_LEN,
        "eval_texts": len(eval_texts),
        "optimum_preset": preset,
        "versions": {d: version(d) for d in ("optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "transformers")},
        "method": "size from files on disk; cosine of the sentence embedding vs the PyTorch teacher; latency median of "
        f"{args.rounds} interleaved rounds x {args.repeats} runs after 3 warm-up, 1 intra-op thread",
        "optimum_best_int8": best,
        "models": models,
        "goals": goals,
    }
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
