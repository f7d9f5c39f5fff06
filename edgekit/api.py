"""The verbs of edgekit as functions; the CLI is a thin shell over these.

`export` is the spine: profile -> teacher -> passes -> every converter x precision ->
run each artifact in its real runtime against the teacher -> bundle + report, written
atomically into `out/<device>/`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import edgekit
from converters.base import EXIT_LAYER, MEASURED_HOST, NOT_RUN, Artifact, RuntimeUnavailable, get_converter
from edgekit.bundle import file_inventory, runtime_versions, staged_bundle, write_json
from edgekit.errors import BudgetError, UserError
from edgekit.integration import INTEGRATION_FILE, write_app_assets
from edgekit.model import Teacher, load_teacher, parameter_counts
from edgekit.passes import PassContext, check_recipe_order, get_pass
from edgekit.profiles import DeviceProfile, all_profiles, load_profile
from edgekit.recipe import PRECISIONS, Recipe, parse_recipe
from edgekit.report.html import write_html
from edgekit.report.schema import (
    ArtifactReport,
    BudgetCheck,
    FidelityReport,
    LatencyReport,
    Report,
    SizeReport,
)
from edgekit.verify.fidelity import fidelity
from edgekit.verify.latency import host_description, time_runs
from edgekit.verify.texts import SAMPLE_TEXTS_DIR, load_texts

#: A runtime that is only a reference check (not device kernels) is run on this many texts.
REFERENCE_RUNTIME_TEXTS = 48

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    out_dir: Path
    report: Report

    @property
    def report_html(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def integration_md(self) -> Path:
        return self.out_dir / INTEGRATION_FILE


def devices() -> list[DeviceProfile]:
    return all_profiles()


def _host_threads(profile: DeviceProfile) -> int:
    import os

    return max(1, min(profile.threads, os.cpu_count() or 1))


def _resolve_precisions(profile: DeviceProfile, recipe: Recipe, precisions: list[str] | None) -> list[str]:
    chosen = list(precisions or recipe.precisions or profile.precisions)
    for p in chosen:
        if p not in PRECISIONS:
            raise UserError(f"unknown precision '{p}'; use one of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(chosen))


def _run_artifact(runtime, inputs: dict[str, np.ndarray], n: int, main: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Output `main` for the first `n` texts (batch 1 each) and, for early-exit artifacts, the layer each stopped at."""
    rows, layers = [], []
    for i in range(n):
        outputs = runtime.run({k: v[i : i + 1] for k, v in inputs.items()})
        rows.append(outputs[main] if main in outputs else next(iter(outputs.values())))
        if EXIT_LAYER in outputs:
            layers.append(int(np.asarray(outputs[EXIT_LAYER]).reshape(-1)[0]))
    return np.concatenate(rows).astype(np.float32), (np.array(layers) if layers else None)


def _dynamic_report(student: torch.nn.Module, exit_layers: np.ndarray | None, provenance: str) -> dict | None:
    """Exit rate per layer as the artifact ran it on the texts (early exit) or the token schedule (token skipping)."""
    if hasattr(student, "segments"):
        if exit_layers is None:
            return {"kind": "early-exit", "exit_rate": {}, "mean_layers": None, "provenance": f"{NOT_RUN}: artifact not run here"}
        n_layers = student.num_layers
        rate = {f"layer {x}" + (" (full)" if x == n_layers else ""): float(np.mean(exit_layers == x)) for x in student.exits + [n_layers]}
        return {
            "kind": f"early-exit ({student.criterion} > {float(student.threshold[0]):g})"
            if student.criterion != "entropy"
            else f"early-exit (entropy < {float(student.threshold[0]):g})",
            "exit_rate": rate,
            "mean_layers": float(np.mean(exit_layers)),
            "provenance": f"{provenance}: exit_layer output of the artifact on {len(exit_layers)} texts",
        }
    if hasattr(student, "schedule"):
        word = "keep" if student.mode == "keep" else "threshold"
        schedule = ", ".join(f"{word} {v:g} after layer {k}" for k, v in student.schedule.items())
        return {"kind": f"token-skip ({student.mode})", "exit_rate": {}, "mean_layers": None, "schedule": schedule, "provenance": "recipe"}
    return None


def _torch_reference(teacher: Teacher, inputs: dict[str, np.ndarray], threads: int, repeats: int) -> dict:
    """Teacher outputs for every text plus its own host latency and size, for the report's reference row."""
    torch.set_num_threads(threads)
    outputs = np.concatenate([teacher.run({k: v[i : i + 32] for k, v in inputs.items()}) for i in range(0, len(inputs["input_ids"]), 32)])
    one = {k: torch.from_numpy(v[:1]) for k, v in inputs.items()}
    with torch.no_grad():
        lat = time_runs(lambda: teacher.module(**one), repeats=repeats)
    counts = teacher.parameter_counts()
    fp32_bytes = 4 * counts["total"]
    return {
        "outputs": outputs,
        "latency": {**lat, "threads": threads, "provenance": MEASURED_HOST, "runtime": f"torch {torch.__version__}"},
        "size_mb": fp32_bytes / 1e6,
        "size_without_embeddings_mb": 4 * counts["non_embedding"] / 1e6,
        "size_provenance": "computed: 4 bytes x parameter count (fp32)",
    }


def _verify(
    artifact: Artifact,
    converter,
    teacher: Teacher,
    inputs: dict[str, np.ndarray],
    reference: np.ndarray,
    threads: int,
    seq_len: int,
    repeats: int,
) -> tuple[FidelityReport, LatencyReport]:
    try:
        runtime = converter.runtime(artifact, threads)
    except RuntimeUnavailable as exc:
        reason = str(exc)
        return (FidelityReport(provenance=NOT_RUN, reason=reason), LatencyReport(provenance=NOT_RUN, reason=reason))
    n = len(reference) if runtime.measures_latency else min(len(reference), REFERENCE_RUNTIME_TEXTS)
    outputs, exit_layers = _run_artifact(runtime, inputs, n, teacher.output_name)
    artifact.exit_layers = exit_layers
    fid = FidelityReport(
        metrics=fidelity(teacher.task, reference[:n], outputs),
        n_texts=n,
        runtime=runtime.name,
        runtime_version=runtime.version,
        provenance=runtime.provenance,
    )
    if not runtime.measures_latency:
        reason = getattr(runtime, "latency_reason", f"{runtime.name} is a reference check, not the device's kernels")
        return fid, LatencyReport(provenance=NOT_RUN, reason=reason, seq_len=seq_len)
    one = {k: v[:1] for k, v in inputs.items()}
    lat = time_runs(lambda: runtime.run(one), repeats=repeats)
    return fid, LatencyReport(
        median_ms=lat["median_ms"],
        p90_ms=lat["p90_ms"],
        min_ms=lat["min_ms"],
        threads=runtime.threads,
        seq_len=seq_len,
        warmup=lat["warmup"],
        repeats=lat["repeats"],
        runtime=f"{runtime.name} {runtime.version}",
        provenance=runtime.provenance,
    )


def _weight_zero_fraction(model: torch.nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    return sum(int((p == 0).sum()) for p in model.parameters() if p.dim() >= 2) / max(total, 1)


def _dense_storage_note(path: Path, zero_fraction: float, palette_bits: int | None) -> str:
    """Zeros and shared values do not shrink a dense format: say so, with the measured deflate size of the file."""
    import zlib

    data = path.read_bytes()
    packed = len(zlib.compress(data, 6))
    what = (
        f"weights hold only 2^{palette_bits} values per table (palettized)"
        if palette_bits
        else f"{zero_fraction:.0%} of weight values are zero"
    )
    return (
        f"{what} but this format stores them densely (file size unchanged); "
        f"deflate-compressed (e.g. in a zip/APK): {packed / 1e6:.1f} MB of {len(data) / 1e6:.1f} MB, measured"
    )


def _budget_checks(profile: DeviceProfile, task: str, artifacts: list[ArtifactReport]) -> list[BudgetCheck]:
    b = profile.budgets
    checks: list[BudgetCheck] = []
    for art in artifacts:
        if b.size_mb is not None:
            checks.append(
                BudgetCheck(
                    artifact=art.path,
                    budget="size_mb",
                    limit=b.size_mb,
                    value=art.size.mb,
                    passed=art.size.mb <= b.size_mb,
                    provenance=art.size.provenance,
                )
            )
        metric, limit = ("cosine_mean", b.min_cosine) if task == "embedding" else ("top1_agreement", b.min_top1_agreement)
        if limit is not None:
            value = art.fidelity.metrics.get(metric)
            checks.append(
                BudgetCheck(
                    artifact=art.path,
                    budget=f"min_{metric}",
                    limit=limit,
                    value=value,
                    passed=None if value is None else value >= limit,
                    provenance=art.fidelity.provenance,
                    note="" if value is not None else f"not checked: {art.fidelity.reason}",
                )
            )
        if b.latency_ms is not None:
            checks.append(
                BudgetCheck(
                    artifact=art.path,
                    budget="latency_ms",
                    limit=b.latency_ms,
                    value=None,
                    passed=None,
                    provenance=NOT_RUN,
                    note="not checked: needs a device measurement or estimate; host latency is not device latency",
                )
            )
    return checks


def export(
    device: str = "pixel4",
    model: str | Path | None = None,
    *,
    formats: list[str] | None = None,
    precisions: list[str] | None = None,
    recipe: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    texts: str | Path | None = None,
    max_texts: int | None = None,
    latency_repeats: int = 30,
    allow_over_budget: bool = False,
    progress: Progress | None = None,
    corpus: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    min_fidelity: float | None = None,
    calibration_texts: str | Path | None = None,
) -> ExportResult:
    """Export `model` (default: the embedded teacher) for `device`; see `edgekit export --help`."""
    say = progress or (lambda _msg: None)
    profile = load_profile(device)
    parsed = parse_recipe(recipe if recipe is not None else profile.default_recipe)
    chosen_formats = list(dict.fromkeys(formats or profile.formats))
    converters = {fmt: get_converter(fmt) for fmt in chosen_formats}
    chosen_precisions = _resolve_precisions(profile, parsed, precisions)
    if min_fidelity is not None:
        if not 0.0 < min_fidelity <= 1.0:
            raise UserError(f"--min-fidelity {min_fidelity} is not a cosine in (0, 1]; e.g. --min-fidelity 0.998")
        if "int8" not in chosen_precisions:
            raise UserError("--min-fidelity chooses which ops stay float in int8; add int8 to the recipe or --precision int8")
    passes = [get_pass(step.name, step.options) for step in parsed.passes]  # bad configs fail before any work
    check_recipe_order([(step.name, p) for step, p in zip(parsed.passes, passes, strict=True)])
    for conv in converters.values():
        for p in chosen_precisions:
            conv.check_precision(p)
        for step, pass_ in zip(parsed.passes, passes, strict=True):
            if pass_.control_flow and not conv.lowers_control_flow:
                raise UserError(
                    f"{conv.format} cannot lower {step.name} as control flow yet; drop it or choose formats with --formats onnx"
                )
    out_dir = Path(out) if out is not None else Path("out") / profile.name
    from edgekit.bundle import check_target

    check_target(out_dir, force)

    say("loading teacher")
    teacher = load_teacher(model, allow_pickle=allow_pickle)
    sample_texts = load_texts(texts, limit=max_texts)
    # Passes and quantizers learn from these; verified on `sample_texts`. Separate texts make the fidelity unbiased.
    learn_texts = load_texts(calibration_texts) if calibration_texts is not None else sample_texts
    seq_len = profile.seq_len
    inputs = teacher.tokenize(sample_texts, seq_len)
    threads = _host_threads(profile)
    say(f"running the PyTorch teacher on {len(sample_texts)} texts")
    reference = _torch_reference(teacher, inputs, threads, latency_repeats)

    # Passes work on a copy: the teacher stays the untouched reference every artifact is compared with.
    student = copy.deepcopy(teacher.module) if parsed.passes else teacher.module
    ctx = PassContext(teacher=teacher, texts=learn_texts, profile=profile, seq_len=seq_len, corpus=corpus, checkpoint_dir=checkpoint_dir)
    for step, pass_ in zip(parsed.passes, passes, strict=True):
        say(f"pass {step.name}")
        student = pass_.apply(student, ctx)
    counts = parameter_counts(student)
    weight_zeros = _weight_zero_fraction(student)
    # the artifacts see the student's tokenizer (vocab-prune rewrites it); the reference keeps the teacher's
    shipped = dataclasses.replace(teacher, tokenizer=ctx.tokenizer) if ctx.tokenizer is not None else teacher
    artifact_inputs = shipped.tokenize(sample_texts, seq_len) if ctx.tokenizer is not None else inputs
    calibrated = [p for p in chosen_precisions if p in ("int8", "int8-static")]
    calibration_inputs = shipped.tokenize(learn_texts[:64], seq_len) if calibration_texts is not None else artifact_inputs
    calibrated_on_verification_texts = calibration_texts is None and bool(parsed.passes or calibrated)

    artifact_reports: list[ArtifactReport] = []
    notes: list[str] = []
    with staged_bundle(out_dir, force) as staging:
        for fmt, conv in converters.items():
            for precision in chosen_precisions:
                say(f"exporting {fmt} {precision}")
                spec = shipped.export_spec(
                    precision,
                    artifact_inputs,
                    calibration=0,
                    deployment_target=profile.deployment_target,
                    min_fidelity=min_fidelity if precision == "int8" else None,
                )
                n_calib = min(64, len(calibration_inputs["input_ids"]))
                spec.calibration_inputs = [{k: v[i : i + 1] for k, v in calibration_inputs.items()} for i in range(n_calib)]
                if hasattr(student, "segments"):
                    spec.output_names = [teacher.output_name, EXIT_LAYER]
                started = time.perf_counter()
                artifact = conv.lower(student, spec, staging)
                artifact.notes.append(f"converted in {time.perf_counter() - started:.1f} s")
                if spec.min_fidelity is not None and not conv.mixed_precision:
                    artifact.notes.append(
                        f"--min-fidelity {min_fidelity:g} not applied: {fmt} int8 has no per-op float fallback in edgekit yet"
                    )
                if artifact.path.is_file() and (weight_zeros >= 0.05 or getattr(student, "palettized_bits", None)):
                    artifact.notes.append(_dense_storage_note(artifact.path, weight_zeros, getattr(student, "palettized_bits", None)))
                say(f"verifying {artifact.name}")
                fid, lat = _verify(artifact, conv, teacher, artifact_inputs, reference["outputs"], threads, seq_len, latency_repeats)
                size = artifact.size_bytes()
                emb = artifact.embedding_bytes
                artifact_reports.append(
                    ArtifactReport(
                        name=artifact.name,
                        format=fmt,
                        precision=precision,
                        path=artifact.name,
                        size=SizeReport(
                            bytes=size,
                            mb=size / 1e6,
                            embedding_bytes=emb,
                            without_embeddings_mb=None if emb is None else (size - emb) / 1e6,
                        ),
                        parameters=counts,
                        fidelity=fid,
                        latency=lat,
                        inputs=[t.to_json() for t in artifact.inputs],
                        outputs=[t.to_json() for t in artifact.outputs],
                        ops=artifact.ops,
                        notes=artifact.notes,
                        dynamic=_dynamic_report(student, getattr(artifact, "exit_layers", None), fid.provenance),
                    )
                )
        if "coreml" in converters and any(a.latency.median_ms is None for a in artifact_reports if a.format == "coreml"):
            notes.append(
                "Core ML: prediction needs macOS; on this host the saved ML program was interpreted op by op in "
                "numpy (MIL reference on host, not device kernels) to measure fidelity; latency not run."
            )
        if calibrated_on_verification_texts:
            parts = (["recipe passes"] if parsed.passes else []) + ([f"{'/'.join(calibrated)} calibration"] if calibrated else [])
            what = " and ".join(parts)
            notes.append(
                f"{what} used the same verification texts the fidelity is measured on (optimistic): pass "
                "--calibration-texts with other texts for an unbiased figure (bench/ scripts use a held-out split)"
            )
        elif calibration_texts is not None:
            shared = len(set(learn_texts) & set(sample_texts))
            notes.append(
                f"passes and calibration learned from {len(learn_texts)} texts of {calibration_texts}; fidelity is measured on "
                f"the {len(sample_texts)} verification texts" + (f" ({shared} of which are also calibration texts)" if shared else "")
            )
        say("writing bundle")
        tok_dir = staging / "tokenizer"
        shipped.tokenizer.save_pretrained(tok_dir)
        manifest_artifacts = [
            {"path": a.path, "format": a.format, "precision": a.precision, "inputs": a.inputs, "outputs": a.outputs}
            for a in artifact_reports
        ]
        say("writing app-integration assets (tokenizer test vectors, INTEGRATION.md)")
        write_app_assets(staging, shipped, seq_len, manifest_artifacts, profile=profile)
        report = Report(
            edgekit_version=edgekit.__version__,
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            device={
                "name": profile.name,
                "display_name": profile.display_name,
                "os": profile.os,
                "deployment_target": profile.deployment_target,
                "threads": profile.threads,
                "seq_len": seq_len,
            },
            teacher={
                "name": teacher.name,
                "task": teacher.task,
                "model_type": teacher.model_type,
                "source_hash": teacher.source_hash,
                "parameters": counts,
                "output": teacher.output_name,
                "pooling": vars(teacher.pooling) if teacher.pooling else None,
                "labels": teacher.labels,
            },
            recipe=parsed.to_json() | {"formats": chosen_formats, "precisions": chosen_precisions},
            host=host_description() | {"threads_used": threads},
            texts={
                "source": str(texts or SAMPLE_TEXTS_DIR.relative_to(SAMPLE_TEXTS_DIR.parents[1])),
                "count": len(sample_texts),
                "seq_len": seq_len,
                "truncated": int((inputs["attention_mask"].sum(axis=1) >= seq_len).sum()),
            },
            versions=runtime_versions(),
            reference={k: v for k, v in reference.items() if k != "outputs"},
            artifacts=artifact_reports,
            budgets=[],
            notes=notes,
            passes=ctx.records,
        )
        report.budgets = _budget_checks(profile, teacher.task, artifact_reports)
        write_json(staging / "report.json", report.model_dump(mode="json"))
        write_html(report, staging / "report.html")
        manifest = {
            "edgekit_version": edgekit.__version__,
            "created_utc": report.created_utc,
            "device": profile.model_dump(mode="json"),
            "source_model": {
                "name": teacher.name,
                "path": str(teacher.source_dir),
                "weights_sha256": teacher.source_hash,
                "task": teacher.task,
                "model_type": teacher.model_type,
            },
            "recipe": report.recipe,
            "passes": ctx.records,
            "tokenizer": {
                "dir": "tokenizer",
                "max_length": seq_len,
                "padding": "max_length",
                "truncation": True,
                "special_tokens": shipped.tokenizer.special_tokens_map,
                "vocab_size": len(shipped.tokenizer.get_vocab()),
            },
            "versions": report.versions,
            "artifacts": manifest_artifacts,
            "files": file_inventory(staging),
        }
        write_json(staging / "manifest.json", manifest)
    result = ExportResult(out_dir=out_dir, report=report)
    if not report.budgets_passed and not allow_over_budget:
        missed = [f"{b.artifact} {b.budget} {b.value:.4g} (limit {b.limit})" for b in report.budgets if b.passed is False]
        raise BudgetError(
            f"budget missed for {profile.name}: {'; '.join(missed)} — bundle written to {out_dir}; pass --allow-over-budget to accept"
        )
    return result
