"""`edgekit profile`: latency of a bundle's artifacts three ways, each labelled.

- `host`: measured on this machine in the artifact's real runtime (median of repeated runs, per-op
  breakdown from onnxruntime's profiler, peak memory in a fresh process);
- `estimate`: predicted for the device from the op graph and the profile (`edgekit.verify.estimate`);
- `adb`: measured on an Android device with LiteRT's `benchmark_model` (`edgekit.verify.adb`).

Results go to `<bundle>/profiles/<device>-<runner>.json|.html`, outside the manifest (which
describes the bundle as exported). Latency budgets are gated only on device numbers (estimated or
measured on the device), never on host timings.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from converters.base import NOT_RUN, get_converter
from edgekit.bundle import load_bundle, write_json
from edgekit.errors import BudgetError, UserError
from edgekit.profiles import load_profile
from edgekit.verify.latency import host_description, time_runs

Runner = Literal["host", "estimate", "adb"]
RUNNERS = ("host", "estimate", "adb")


@dataclass
class ProfileRow:
    artifact: str
    format: str
    precision: str
    size_mb: float
    fidelity: float | None
    latency_ms: float | None = None
    provenance: str = NOT_RUN
    threads: int | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProfileResult:
    bundle: Path
    device: str
    runner: str
    rows: list[ProfileRow]
    json_path: Path
    html_path: Path
    budgets: list[dict[str, Any]]
    method: str


def _host_row(row: ProfileRow, artifact, threads: int, runs: int, seq_len: int) -> None:
    from edgekit.verify.op_profile import OpProfileUnavailable, measure_memory, profile_ops, synthetic_inputs

    runtime = get_converter(artifact.format).runtime(artifact, threads)
    if not runtime.measures_latency:
        row.reason = getattr(runtime, "latency_reason", f"{runtime.name} does not measure latency")
        return
    inputs = synthetic_inputs(artifact.inputs, seq_len)
    lat = time_runs(lambda: runtime.run(inputs), repeats=runs)
    row.latency_ms, row.provenance, row.threads = lat["median_ms"], runtime.provenance, runtime.threads
    row.details["latency"] = lat | {"runtime": f"{runtime.name} {runtime.version}"}
    try:
        row.details["op_profile"] = profile_ops(artifact, threads, runs=min(runs, 20), inputs=inputs, seq_len=seq_len).to_json(top=15)
    except OpProfileUnavailable as exc:
        row.details["op_profile_unavailable"] = str(exc)
    try:
        row.details["memory"] = measure_memory(artifact, threads, seq_len=seq_len).to_json()
    except Exception as exc:  # memory is a bonus figure; say why it is missing
        row.details["memory_unavailable"] = f"{exc.__class__.__name__}: {exc}"


def _estimate_row(row: ProfileRow, artifact, profile, threads: int | None, seq_len: int) -> str:
    from edgekit.verify.estimate import VALIDATION, estimate_artifact

    if artifact.format not in ("onnx", "tflite"):
        row.reason = f"the estimator models ONNX and TFLite op graphs, not {artifact.format}"
        return ""
    est = estimate_artifact(artifact.path, artifact.format, artifact.precision, profile, threads, seq_len)
    row.latency_ms, row.provenance, row.threads = est.total_ms, est.provenance, est.threads
    row.details["estimate"] = est.to_json()
    row.details["estimate"].pop("per_op", None)  # top_ops and by_op_type are enough for a report
    row.details["estimate"]["validation"] = VALIDATION
    return est.method


def _adb_row(row: ProfileRow, artifact, profile, threads: int | None, adb_options: dict[str, Any]) -> None:
    from edgekit.verify.adb import benchmark_on_device

    if artifact.format != "tflite":
        row.reason = "the adb runner benchmarks TFLite artifacts with LiteRT's benchmark_model"
        return
    bench = benchmark_on_device(artifact, profile, threads=threads, **adb_options)
    best = bench.best()
    row.details["device_benchmark"] = bench.to_json()
    if best is None or not best.ok:
        row.reason = "; ".join(r.error or "" for r in bench.results) or "benchmark_model gave no timing"
        return
    row.latency_ms, row.provenance, row.threads = best.latency_ms, best.provenance, best.threads


def _validation() -> dict[str, Any]:
    from edgekit.verify.estimate import VALIDATION

    return VALIDATION


def profile(
    bundle: str | Path,
    device: str | None = None,
    runner: str = "host",
    *,
    threads: int | None = None,
    runs: int = 30,
    adb_options: dict[str, Any] | None = None,
    allow_over_budget: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ProfileResult:
    """Profile every artifact of `bundle` with `runner`; write JSON + HTML; gate device latency budgets."""
    import os

    say = progress or (lambda _msg: None)
    if runner not in RUNNERS:
        raise UserError(f"unknown runner '{runner}'; use one of {', '.join(RUNNERS)}")
    report, artifacts = load_bundle(bundle)
    prof = load_profile(device or report["device"]["name"])
    seq_len = int(report.get("device", {}).get("seq_len") or prof.seq_len)
    host_threads = max(1, min(prof.threads, os.cpu_count() or 1))
    by_name = {a["path"]: a for a in report["artifacts"]}
    rows: list[ProfileRow] = []
    method = ""
    for artifact in artifacts:
        entry = by_name[artifact.path.name]
        metrics = entry["fidelity"]["metrics"]
        row = ProfileRow(artifact.path.name, artifact.format, artifact.precision, entry["size"]["mb"],
                         metrics.get("cosine_mean", metrics.get("top1_agreement")))
        say(f"{runner}: {row.artifact}")
        if runner == "host":
            _host_row(row, artifact, threads or host_threads, runs, seq_len)
            method = ("measured on this host in each artifact's runtime: median of repeated batch-1 runs after 5 warm-up runs; "
                      "per-op breakdown from onnxruntime's profiler; peak memory in a fresh process")
        elif runner == "estimate":
            method = _estimate_row(row, artifact, prof, threads, seq_len) or method
        else:
            _adb_row(row, artifact, prof, threads, adb_options or {})
            method = "measured on the device with LiteRT benchmark_model over adb (median of runs after warm-up)"
        rows.append(row)
    budgets = []
    device_numbers = runner in ("estimate", "adb")
    if prof.budgets.latency_ms is not None:
        for row in rows:
            if row.latency_ms is None or not device_numbers:
                note = "not checked: host latency is not device latency" if not device_numbers else f"not checked: {row.reason}"
                budgets.append({"artifact": row.artifact, "budget": "latency_ms", "limit": prof.budgets.latency_ms,
                                "value": row.latency_ms, "passed": None, "provenance": row.provenance, "note": note})
            else:
                budgets.append({"artifact": row.artifact, "budget": "latency_ms", "limit": prof.budgets.latency_ms,
                                "value": row.latency_ms, "passed": row.latency_ms <= prof.budgets.latency_ms,
                                "provenance": row.provenance, "note": ""})
    out_dir = Path(bundle) / "profiles"
    out_dir.mkdir(exist_ok=True)
    stem = f"{prof.name}-{runner}"
    data = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle), "device": prof.name, "display_name": prof.display_name, "runner": runner,
        "method": method, "host": host_description(), "seq_len": seq_len, "task": report["teacher"]["task"],
        "rows": [vars(r) for r in rows], "budgets": budgets,
        "validation": _validation() if runner == "estimate" else None,
    }
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    write_json(json_path, data)
    from edgekit.report.profile_html import write_profile_html

    write_profile_html(data, html_path)
    result = ProfileResult(Path(bundle), prof.name, runner, rows, json_path, html_path, budgets, method)
    missed = [b for b in budgets if b["passed"] is False]
    if missed and not allow_over_budget:
        text = "; ".join(f"{b['artifact']} {b['value']:.1f} ms > {b['limit']} ms ({b['provenance']})" for b in missed)
        raise BudgetError(f"latency budget missed on {prof.name}: {text}; profile written to {json_path}; "
                          "pass --allow-over-budget to accept")
    return result
