"""The `edgekit` command: a thin typer shell over `edgekit.api`.

Exit codes: 0 success, 2 bad input (`UserError`, one line on stderr), 3 budget missed,
1 a bug (traceback).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgekit.errors import EdgekitError
from edgekit.recipe import PRECISIONS

app = typer.Typer(
    help="Compress a transformer text model and export it to ONNX, TFLite and Core ML for a named device, "
    "then verify fidelity and latency against the teacher.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Outside a terminal rich would wrap tables at 80 columns; reports read better wider.
_WIDTH = max(shutil.get_terminal_size((140, 24)).columns, 120)
err = Console(stderr=True, width=_WIDTH)
out = Console(width=_WIDTH)


def _split(values: list[str] | None) -> list[str] | None:
    """Accept both repeated options and comma lists: --formats onnx --formats tflite == --formats onnx,tflite."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def export(
    device: Annotated[
        str, typer.Option("--device", "-d", help="Built-in device name (see 'edgekit devices') or a profile YAML path.")
    ] = "pixel4",
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Local Hugging Face model directory. Default: the embedded all-MiniLM-L6-v2 teacher."),
    ] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--formats", "-f", help="Formats to export (onnx, tflite, coreml), comma-separated or repeated. Default: the profile's."
        ),
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            "--precision",
            "-p",
            help="Precisions (" + ", ".join(PRECISIONS) + "), comma-separated or repeated. Default: the recipe's, else the profile's.",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            "-r",
            help="Compression recipe: shorthand ('int8', 'pass:key=value+int8') or a recipe .yaml file. Default: the profile's.",
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="The bundle directory itself. Default: out/<device>.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --out.")] = False,
    texts: Annotated[
        Path | None, typer.Option("--texts", help="Verification texts: a .txt file (one per line) or a directory. Default: samples/texts.")
    ] = None,
    calibration_texts: Annotated[
        Path | None,
        typer.Option(
            "--calibration-texts",
            help="Texts passes and int8 calibration learn from (a .txt file or directory). Default: the verification texts "
            "themselves, which flatters fidelity; give other texts for an unbiased figure.",
        ),
    ] = None,
    max_texts: Annotated[
        int | None, typer.Option("--max-texts", min=2, help="Use only the first N verification texts (faster, less precise).")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per artifact for host latency (after 5 warm-up runs).")] = 30,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Load pickle-only (pytorch_model.bin) checkpoints. Only for sources you trust.")
    ] = False,
    allow_over_budget: Annotated[
        bool, typer.Option("--allow-over-budget", help="Exit 0 even when a device budget (size, fidelity) is missed.")
    ] = False,
    arm: Annotated[
        bool, typer.Option("--arm", help="Then run 'verify --arch arm64' on the bundle (the device's cores, 16 texts).")
    ] = False,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Training texts for learning passes (distill): a .txt file or a directory of them.")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Checkpoints of learning passes. Default: ~/.cache/edgekit/distill/<hash>.")
    ] = None,
    min_fidelity: Annotated[
        float | None,
        typer.Option(
            "--min-fidelity",
            help="int8: measure each weight op's cost when quantized alone and keep the costliest in float until the "
            "mean cosine on calibration texts reaches this (e.g. 0.998). ONNX; other formats say they ignore it.",
        ),
    ] = None,
) -> None:
    """Export the model for a device: every format x precision, verified against the teacher, as a bundle with a report."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgekit import api

    if arm:  # say it before minutes of export, not after
        from edgekit.verify.arm_env import require_env

        require_env()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        last: list[str] = []

        def step(message: str) -> None:
            if last:
                err.print(f"[green]✓[/green] {last[-1]}")
            last.append(message)
            bar.update(task, description=message)

        result = api.export(
            device=device,
            model=model,
            formats=_split(formats),
            precisions=_split(precision),
            recipe=recipe,
            out=out_dir,
            force=force,
            allow_pickle=allow_pickle,
            texts=texts,
            max_texts=max_texts,
            latency_repeats=repeats,
            allow_over_budget=allow_over_budget,
            progress=step,
            corpus=corpus,
            checkpoint_dir=checkpoint_dir,
            min_fidelity=min_fidelity,
            calibration_texts=calibration_texts,
        )
        if last:
            err.print(f"[green]✓[/green] {last[-1]}")
    _print_summary(result.report)
    out.print(f"bundle: {result.out_dir}   report: {result.report_html}")
    out.print(f"app integration: {result.integration_md} (tokenizer test vectors: {result.out_dir / 'tokenizer_test_vectors.json'})")
    if arm:
        _verify_arm_after_export(result.out_dir, model)


def _verify_arm_after_export(bundle: Path, model: Path | None) -> None:
    """`export --arm`: the same check as `verify --arch arm64` on the fresh bundle (environment checked before the export)."""
    from edgekit.verify.arm import ArmCheckFailed, verify_arm

    with err.status("verifying on arm64 (emulated)") as status:
        result = verify_arm(bundle, model=model, progress=lambda m: status.update(m), raise_on_failure=False)
    _print_arm(result)
    if result.failures:
        raise ArmCheckFailed(result.failure_message())


def _print_summary(report) -> None:
    table = Table(title=f"{report.device['display_name']} — {report.teacher['name']}", show_lines=False)
    for col in ("artifact", "size MB", "w/o emb. MB", "fidelity", "host median ms", "how measured"):
        table.add_column(col, justify="left" if col in ("artifact", "how measured") else "right")
    for a in report.artifacts:
        m = a.fidelity.metrics
        fid = (f"cos {m['cosine_mean']:.5f}" if "nn_agreement" in m else f"top1 {m['top1_agreement']:.4f}") if m else "not run"
        lat = f"{a.latency.median_ms:.2f} ({a.latency.threads} thr)" if a.latency.median_ms is not None else "not run"
        emb = f"{a.size.without_embeddings_mb:.1f}" if a.size.without_embeddings_mb is not None else "n/a"
        how = a.fidelity.provenance if a.latency.median_ms is not None else f"{a.fidelity.provenance}; latency: {a.latency.reason}"
        table.add_row(a.path, f"{a.size.mb:.1f}", emb, fid, lat, how)
    out.print(table)
    missed = [b for b in report.budgets if b.passed is False]
    if missed:
        for b in missed:
            err.print(f"[red]budget missed[/red]: {b.artifact} {b.budget} = {b.value:.4g} (limit {b.limit})")


@app.command()
def compress(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Passes to run, e.g. 'distill:layers=3' (precisions belong to export).")],
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Local Hugging Face model directory. Default: the embedded all-MiniLM-L6-v2 teacher."),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Training texts: a .txt file (one per line) or a directory of them. Default: samples/texts."),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the student. Default: out/student.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing directory at --out.")] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option("--checkpoint-dir", help="Training checkpoints (resume after Ctrl-C). Default: ~/.cache/edgekit/distill/<hash>."),
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Load pickle-only (pytorch_model.bin) checkpoints. Only for sources you trust.")
    ] = False,
) -> None:
    """Run a recipe's passes (e.g. distillation) and save the student as a Hugging Face directory that 'export --model' reads."""
    from edgekit.compress import compress as run

    result = run(model, recipe=recipe, corpus=corpus, out=out_dir, force=force, checkpoint_dir=checkpoint_dir, allow_pickle=allow_pickle)
    for rec in result.records:
        d = rec.get("distill")
        line = f"{rec['pass']}: parameters {rec['params_before']:,} -> {rec['params_after']:,}"
        if d:
            b, a = d["heldout_before"], d["heldout_after"]
            key = "cosine_mean" if "cosine_mean" in a else "top1_agreement"
            line += f"; held-out {key} {b[key]:.4f} -> {a[key]:.4f} on {d['heldout_texts']} texts"
            line += f"; trained {d['train_seconds']:.0f} s wall ({d['train_cpu_seconds']:.0f} s CPU)"
        out.print(line)
    out.print(f"student: {result.out_dir}   export it with: edgekit export --model {result.out_dir}")


@app.command("profile")
def profile_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory written by 'edgekit export'.")],
    device: Annotated[str | None, typer.Option("--device", "-d", help="Device name or profile YAML. Default: the bundle's device.")] = None,
    runner: Annotated[
        str,
        typer.Option("--runner", help="host (measured here), estimate (predicted for the device) or adb (measured on an Android device)."),
    ] = "host",
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Threads. Default: the profile's (capped at host cores for host).")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per artifact (host runner).")] = 30,
    adb: Annotated[str | None, typer.Option("--adb", help="Path to adb (default: found on PATH).")] = None,
    serial: Annotated[str | None, typer.Option("--serial", help="adb device serial when several are connected.")] = None,
    benchmark_model: Annotated[
        str | None, typer.Option("--benchmark-model", help="Path to LiteRT's benchmark_model for the device ABI.")
    ] = None,
    allow_over_budget: Annotated[bool, typer.Option("--allow-over-budget", help="Exit 0 even when the latency budget is missed.")] = False,
) -> None:
    """Latency of every artifact in a bundle: measured on this host, estimated for the device, or measured on it over adb."""
    from edgekit.profiling import profile

    adb_options = {k: v for k, v in {"adb": adb, "serial": serial, "benchmark_model": benchmark_model}.items() if v}
    with err.status("profiling"):
        result = profile(bundle, device, runner, threads=threads, runs=runs, adb_options=adb_options, allow_over_budget=allow_over_budget)
    table = Table(title=f"{result.device} — runner {result.runner}")
    for col in ("artifact", "size MB", "fidelity", "latency ms", "threads", "how obtained", "note"):
        table.add_column(col)
    for r in result.rows:
        lat = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "not run"
        fid = f"{r.fidelity:.5f}" if r.fidelity is not None else "-"
        table.add_row(r.artifact, f"{r.size_mb:.1f}", fid, lat, str(r.threads or "-"), r.provenance, r.reason or "")
    out.print(table)
    out.print(f"method: {result.method}")
    for r in result.rows:
        top = r.details.get("op_profile", {}).get("by_type", [])[:5]
        if top:
            out.print(f"{r.artifact} top ops: " + ", ".join(f"{o['op_type']} {o['ms']:.2f} ms ({100 * o['share']:.0f}%)" for o in top))
    if result.runner == "estimate":
        from edgekit.verify.estimate import VALIDATION as v

        out.print(
            f"validation error (host treated as the device, {v['points']} points, `{v['command']}`, {v['date']}): "
            f"median {v['median_abs_error_pct']}%, max {v['max_abs_error_pct']}%; {v['scope']}"
        )
    out.print(f"profile: {result.json_path}  {result.html_path}")


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print the full profiles as JSON instead of a table.")] = False,
) -> None:
    """List the built-in device profiles."""
    from edgekit import api

    profiles = api.devices()
    if as_json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return
    table = Table(title="edgekit device profiles")
    for col in ("name", "device", "OS", "SoC", "CPU", "RAM GB", "formats", "precisions", "seq", "threads"):
        table.add_column(col)
    for p in profiles:
        cpu = " + ".join(f"{c.cores}x{c.ghz:g}GHz" for c in p.cpu_clusters)
        table.add_row(
            p.name,
            p.display_name,
            f"{p.os} {p.os_min_version}",
            p.soc,
            cpu,
            f"{p.ram_gb:g}",
            ",".join(p.formats),
            ",".join(p.precisions),
            str(p.seq_len),
            str(p.threads),
        )
    out.print(table)


@app.command("setup-arm")
def setup_arm(
    force: Annotated[bool, typer.Option("--force", help="Redo every step, even those already done.")] = False,
) -> None:
    """Prepare the aarch64 emulation environment for 'edgekit verify --arch arm64' (QEMU 10, arm64 Python, aarch64 runtimes)."""
    import time

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgekit.verify.arm_env import STEPS, arm_home, setup

    started = time.perf_counter()
    err.print(f"preparing the arm64 environment in {arm_home()} (override with EDGEKIT_ARM_HOME)")
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=len(STEPS))
        current = {"name": ""}

        def step(name: str, state: str) -> None:
            current["name"] = name
            if state in ("done", "cached"):
                err.print(f"[green]✓[/green] {name}" + (" (already done)" if state == "cached" else ""))
                bar.advance(task)
            bar.update(task, description=name)

        def say(message: str) -> None:
            bar.update(task, description=f"{current['name']}: {message}"[:150])

        env = setup(force=force, say=say, step=step)
    info = env.info()
    out.print(
        f"arm64 environment ready in {time.perf_counter() - started:.0f} s: {env.home} ({info.get('size_mb', '?')} MB); "
        f"{info.get('qemu', '')}; guest runtimes {', '.join(f'{k} {v}' for k, v in info.get('versions', {}).items())}"
    )


@app.command("verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory written by 'edgekit export'.")],
    arch: Annotated[
        str, typer.Option("--arch", help="Architecture to check the artifacts' numerics on (arm64: QEMU user-mode emulation).")
    ] = "arm64",
    cpu: Annotated[
        list[str] | None,
        typer.Option(
            "--cpu",
            help="QEMU CPU models, comma-separated or repeated (e.g. cortex-a55,cortex-a76,neoverse-n1). Default: the device's cores.",
        ),
    ] = None,
    max_texts: Annotated[
        int, typer.Option("--max-texts", min=2, help="Verification texts (emulation: ~35 s per text for fp32 MiniLM, ~8 s for int8).")
    ] = 16,
    texts: Annotated[Path | None, typer.Option("--texts", help="Verification texts (.txt or directory). Default: samples/texts.")] = None,
    artifact: Annotated[
        list[str] | None, typer.Option("--artifact", help="Only these artifacts of the bundle (file names), comma-separated or repeated.")
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="The teacher directory, if it moved since the export.")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Emulator processes at a time. Default: cores, at most 4.")] = None,
) -> None:
    """Run every ONNX and TFLite artifact with the real aarch64 kernels under emulation; report ARM vs x86 vs teacher numerics."""
    from edgekit.verify.arm import verify_arm

    with err.status("verifying on arm64 (emulated)") as status:
        result = verify_arm(
            bundle,
            cpus=_split(cpu),
            arch=arch,
            max_texts=max_texts,
            texts=texts,
            artifacts=_split(artifact),
            model=model,
            jobs=jobs,
            progress=lambda m: status.update(m),
            raise_on_failure=False,
        )
    _print_arm(result)
    if result.failures:
        from edgekit.verify.arm import ArmCheckFailed

        raise ArmCheckFailed(result.failure_message())


def _print_arm(result) -> None:
    table = Table(title=f"ARM numerics (emulated, {result.data['n_texts']} texts) — {result.data['device']}")
    cols = (
        "artifact",
        "cpu",
        "XNNPACK nodes arm/x86",
        "arm vs teacher cos mean",
        "x86 vs teacher cos mean",
        "arm-x86 max abs",
        "arm-x86 cos min",
        "mismatches",
        "status",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("artifact", "cpu", "status") else "right", no_wrap=col in ("artifact", "cpu"))
    for r in result.data["rows"]:
        x = r.get("xnnpack") or {}
        nodes = f"{x.get('arm', '-')}/{x.get('x86', '-')}" if x else "n/a"
        c = r["arm_vs_x86"]
        status = "[green]pass[/green]" if r["status"] == "pass" else "[red]FAIL[/red] " + "; ".join(r["failures"])
        table.add_row(
            r["artifact"],
            r["cpu"],
            nodes,
            f"{r['arm_vs_teacher']['cosine_mean']:.6f}",
            f"{r['x86_vs_teacher']['cosine_mean']:.6f}",
            f"{c['max_abs']:.3g}",
            f"{c['cosine_min']:.8f}",
            f"{c['mismatches']}/{c['elements']}",
            status,
        )
    out.print(table)
    for r in result.data["rows"]:
        for note in r.get("notes", []):
            out.print(f"note: {r['artifact']} on {r['cpu']}: {note}")
    out.print(f"mismatch: {result.data['mismatch_definition']}")
    out.print(
        f"emulated timings are not latency; wall time {result.data['wall_seconds']:.0f} s. report: {result.json_path}  {result.html_path}"
    )


def main() -> None:
    """Console entry point: map edgekit errors to one-line messages and exit codes."""
    try:
        app(standalone_mode=False)
    except EdgekitError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        raise


if __name__ == "__main__":
    main()
