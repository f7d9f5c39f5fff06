"""`edgekit verify BUNDLE --arch arm64`: a bundle's numerics with the real aarch64 kernels, without a phone.

Each ONNX and TFLite artifact runs in the aarch64 builds of onnxruntime and LiteRT (the host's
versions) under QEMU user-mode emulation (`edgekit.verify.arm_env`), once per requested CPU model,
on the verification texts tokenised with the bundle's own tokenizer at the bundle's sequence length.
Three outputs are compared on the same inputs:

- the PyTorch teacher, recomputed on the host (the bundle stores no teacher outputs; its manifest
  names the source and its weights' sha256, which must still match),
- the artifact on x86 (this host, the existing runtimes, 1 thread, batch 1),
- the artifact on ARM (emulated, 1 thread, batch 1).

Checks, each a FAILURE when it does not hold (exit 3, report still written):
- the guest saw an aarch64 CPU (QEMU < 8 leaked the host's x86 /proc/cpuinfo);
- TFLite: XNNPACK took over > 0 nodes (a run where the delegate was silently not applied is not a pass);
- float artifacts (fp32/fp16): ARM vs x86 at round-off level (`FLOAT_TOLERANCE`);
- int8 artifacts: ARM and x86 int8 kernels legitimately round differently (measured on all-MiniLM-L6-v2: onnxruntime's
  x86 AVX2 u8s8 path vs ARM's dot-product kernels, cosine down to 0.95 between them), so the ARM vs x86 difference and
  mismatch count are reported, and the gate is on what the phone gets: ARM fidelity vs the teacher (mean cosine) must
  not fall more than `INT8_MAX_FIDELITY_DROP` below x86's on the same texts (the figure the export report shows).
Emulated timings are never reported as latency. Results go to `BUNDLE/verify/arm64.json|.html`,
outside the manifest (like `profile`), written to temporary files and moved into place.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import load_bundle, write_json
from edgekit.errors import BudgetError, UserError
from edgekit.verify.arm_env import ArmEnv, check_cpus, cpus_for_profile, require_env
from edgekit.verify.fidelity import cosine_rows, fidelity

ARCHES = ("arm64",)
#: Texts run under emulation by default. Measured here (QEMU 10, one core, all-MiniLM-L6-v2 at seq 128): about 35 s per
#: text for an fp32 artifact and 7-10 s for int8, per CPU model (TCG emulates NEON float arithmetic in software).
DEFAULT_TEXTS = 16
GUEST_SCRIPT = Path(__file__).resolve().parent / "arm_guest.py"
#: fp32 / fp16-weight artifacts: ARM and x86 must agree to round-off: max |ARM - x86| <= this x max(1, max |x86|).
FLOAT_TOLERANCE = 1e-4
#: int8 artifacts: ARM fidelity vs the teacher (mean cosine) may fall at most this far below x86's on the same texts.
INT8_MAX_FIDELITY_DROP = 0.005
#: An output element "mismatches" when |ARM - x86| > MISMATCH_REL x max |x86 output| (far above fp32 round-off,
#: ~1e-6 here, and what one int8 quantization step off in an activation produces); for integer outputs: any difference.
MISMATCH_REL = 1e-4
MISMATCH_DEFINITION = (
    f"output elements with |ARM - x86| > {MISMATCH_REL:g} x max|x86 output| (float outputs; fp32 round-off stays ~1e-6 relative, "
    "one int8 quantization step off in an activation exceeds it); integer outputs: any difference (>= one quantization step)"
)


class ArmCheckFailed(BudgetError):
    """An artifact's ARM numerics or kernel path failed a check (exit 3); the report is written."""


@dataclass
class ArmVerifyResult:
    data: dict[str, Any]
    json_path: Path
    html_path: Path
    failures: list[str] = field(default_factory=list)

    def failure_message(self) -> str:
        return f"ARM verification failed: {'; '.join(self.failures)}; report written to {self.json_path}"


# ---------------------------------------------------------------------------------------------
# comparisons and checks (pure functions: the tests feed them fake guest results)


def compare(arm: np.ndarray, x86: np.ndarray) -> dict[str, Any]:
    """ARM vs x86 on the same inputs: max abs, cosine (mean/min over texts), mismatches as `MISMATCH_DEFINITION` says."""
    if arm.shape != x86.shape:
        raise ValueError(f"ARM output {arm.shape} and x86 output {x86.shape} differ in shape")
    diff = np.abs(arm.astype(np.float64) - x86.astype(np.float64))
    if np.issubdtype(x86.dtype, np.integer):
        threshold = 0.5
    else:
        threshold = MISMATCH_REL * max(float(np.abs(x86).max()), 1e-12)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    cos = cosine_rows(flat(arm), flat(x86))
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "mismatches": int((diff > threshold).sum()),
        "identical": int((diff == 0).sum()),
        "elements": int(diff.size),
        "x86_max_abs_value": float(np.abs(x86).max()),
    }


def check_row(
    fmt: str,
    precision: str,
    guest: dict[str, Any],
    arm_vs_x86: dict[str, Any] | None,
    arm_vs_teacher: dict[str, float] | None = None,
    x86_vs_teacher: dict[str, float] | None = None,
    xnnpack_expected: bool = True,
) -> list[str]:
    """The failures of one artifact x CPU run; [] means it passed. `guest` is the guest runner's JSON."""
    failures = []
    cpu = guest.get("cpu", {})
    if cpu.get("machine") != "aarch64" or cpu.get("cpuinfo_is_x86"):
        failures.append(
            "the guest did not see an aarch64 CPU (emulator shows the host's /proc/cpuinfo; run 'edgekit setup-arm' for QEMU >= 8)"
        )
    if fmt == "tflite" and xnnpack_expected:
        nodes = guest.get("xnnpack_delegated_nodes")
        if not nodes:
            failures.append(
                f"XNNPACK was not applied ({nodes or 0} delegated nodes): the run used the builtin kernels, not the phone's CPU path"
            )
    if arm_vs_x86 is not None:
        if precision == "int8":
            arm_cos, x86_cos = (arm_vs_teacher or {}).get("cosine_mean"), (x86_vs_teacher or {}).get("cosine_mean")
            if arm_cos is not None and x86_cos is not None and arm_cos < x86_cos - INT8_MAX_FIDELITY_DROP:
                failures.append(
                    f"int8 on ARM is further from the teacher than on x86 (cosine mean {arm_cos:.5f} vs {x86_cos:.5f}, "
                    f"allowed drop {INT8_MAX_FIDELITY_DROP})"
                )
        else:
            limit = FLOAT_TOLERANCE * max(1.0, arm_vs_x86["x86_max_abs_value"])
            if arm_vs_x86["max_abs"] > limit:
                failures.append(f"{precision} ARM vs x86 max abs {arm_vs_x86['max_abs']:.3g} > round-off tolerance {limit:.3g}")
    return failures


# ---------------------------------------------------------------------------------------------
# host side: teacher, inputs, x86 outputs


def _teacher(manifest: dict[str, Any], model: str | Path | None):
    from edgekit.model import DEFAULT_TEACHER_NAME, default_teacher_dir, load_teacher

    source = manifest.get("source_model", {})
    path = Path(model) if model is not None else Path(source.get("path", ""))
    embedded = model is None and (source.get("name") == DEFAULT_TEACHER_NAME or path == default_teacher_dir())
    if not embedded and not path.is_dir():
        raise UserError(f"the bundle's teacher {path} is not there any more; pass --model with the teacher's directory")
    teacher = load_teacher(None if embedded else path, allow_pickle=True)
    want = source.get("weights_sha256")
    if want and teacher.source_hash != want:
        raise UserError(
            f"the teacher at {teacher.source_dir} is not the one this bundle was exported from (weights sha256 differs); "
            "pass --model with the original teacher directory"
        )
    return teacher


def _inputs(bundle: Path, manifest: dict[str, Any], texts: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """Tokenise with the bundle's tokenizer, padded and truncated to the manifest's sequence length (what an app does)."""
    from transformers import AutoTokenizer

    tok_info = manifest.get("tokenizer", {})
    seq_len = int(tok_info.get("max_length") or manifest.get("device", {}).get("seq_len") or 128)
    try:
        tokenizer = AutoTokenizer.from_pretrained(bundle / tok_info.get("dir", "tokenizer"), local_files_only=True)
    except Exception as exc:
        raise UserError(f"the bundle's tokenizer cannot be loaded ({exc.__class__.__name__}); re-run 'edgekit export'") from exc
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    out = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
    if "token_type_ids" in names:
        tt = enc.get("token_type_ids")
        out["token_type_ids"] = (np.zeros_like(out["input_ids"]) if tt is None else tt).astype(np.int64)
    return out


def _x86(artifact, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """The artifact on this host with the existing runtimes (1 thread, batch 1), and its kernel path."""
    from converters.base import get_converter
    from edgekit.verify.arm_guest import xnnpack_partition

    runtime = get_converter(artifact.format).runtime(artifact, 1)
    rows = [next(iter(runtime.run({k: v[i : i + 1] for k, v in inputs.items()}).values())) for i in range(len(inputs["input_ids"]))]
    info: dict[str, Any] = {"runtime": runtime.name, "runtime_version": runtime.version}
    interpreter = getattr(runtime, "_interpreter", None)
    if interpreter is not None:
        ops = interpreter._get_ops_details()
        n_original = sum(1 for o in ops if o["op_name"] != "DELEGATE")
        info["xnnpack_delegated_nodes"], info["builtin_nodes"] = xnnpack_partition(ops, n_original)
        info["nodes"] = n_original
    return np.concatenate(rows), info


# ---------------------------------------------------------------------------------------------
# guest side


def _die_with_parent(cmd: list[str]) -> list[str]:
    """The emulator gets SIGKILL when edgekit dies (a killed verify must not leave minutes of emulation running).

    util-linux `setpriv --pdeathsig` sets it in the child itself: a Python `preexec_fn` is unsafe in threads.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd


def _run_guest(
    env: ArmEnv, artifact, cpu: str, inputs_npz: Path, workdir: Path, xnnpack: bool, timeout: float
) -> tuple[dict, np.ndarray | None]:
    out_npz = workdir / f"{artifact.path.name}.{cpu}.out.npz"
    request = workdir / f"{artifact.path.name}.{cpu}.json"
    request.write_text(
        json.dumps(
            {
                "artifact": str(artifact.path.resolve()),
                "format": artifact.format,
                "inputs": str(inputs_npz),
                "outputs": str(out_npz),
                "threads": 1,
                "site": str(env.site),
                "xnnpack": xnnpack,
            }
        ),
        encoding="utf-8",
    )
    try:
        proc = subprocess.run(
            _die_with_parent(env.guest_command(GUEST_SCRIPT, str(request))),
            capture_output=True,
            text=True,
            env=env.guest_env(cpu),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the emulated run did not finish in {timeout:.0f} s"}, None
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("EDGEKIT_ARM_RESULT ")), None)
    if line is None:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"ok": False, "error": f"the emulated runtime crashed (exit {proc.returncode}: {last[:200]})"}, None
    result = json.loads(line.split(" ", 1)[1])
    if not result.get("ok"):
        return result, None
    with np.load(out_npz) as data:
        arm = data[data.files[0]]
    return result, arm


def _features(guest: dict[str, Any]) -> dict[str, bool]:
    """The CPU features that decide which aarch64 kernels the runtimes dispatch."""
    feats = set(guest.get("cpu", {}).get("features", []))
    return {
        "dotprod": "asimddp" in feats,
        "i8mm": "i8mm" in feats,
        "fp16": "asimdhp" in feats,
        "bf16": "bf16" in feats,
        "sve": "sve" in feats,
    }


# ---------------------------------------------------------------------------------------------


def verify_arm(
    bundle: str | Path,
    *,
    cpus: list[str] | None = None,
    arch: str = "arm64",
    max_texts: int = DEFAULT_TEXTS,
    texts: str | Path | None = None,
    artifacts: list[str] | None = None,
    model: str | Path | None = None,
    xnnpack: bool = True,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
    raise_on_failure: bool = True,
) -> ArmVerifyResult:
    """Run the bundle's ONNX/TFLite artifacts under aarch64 emulation per CPU model; compare with x86 and the teacher.

    `xnnpack=False` asks the guest to run LiteRT without its default delegate: the check then
    reports the failure a phone-less run with XNNPACK silently missing must produce.
    """
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    if arch not in ARCHES:
        raise UserError(f"unknown --arch '{arch}'; supported: {', '.join(ARCHES)}")
    if cpus is not None:
        check_cpus(cpus)
    root = Path(bundle)
    report, all_artifacts = load_bundle(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{root}/manifest.json is missing or invalid; re-run 'edgekit export'") from exc
    if cpus is None:
        from edgekit.profiles import load_profile

        try:
            cpus = cpus_for_profile(load_profile(report["device"]["name"]))
        except UserError:
            cpus = ["cortex-a55", "cortex-a76"]
    if artifacts:
        names = {a.path.name for a in all_artifacts}
        unknown = [a for a in artifacts if a not in names]
        if unknown:
            raise UserError(f"bundle {root} has no artifact {', '.join(unknown)}; it has {', '.join(sorted(names))}")
    chosen = [a for a in all_artifacts if a.format in ("onnx", "tflite") and (not artifacts or a.path.name in artifacts)]
    if not chosen:
        raise UserError(f"bundle {root} has no ONNX or TFLite artifact to run on arm64 (Core ML does not run on Android/Linux ARM)")
    env = require_env()
    jobs = max(1, jobs or min(os.cpu_count() or 1, 4))

    from edgekit.verify.texts import load_texts

    say("loading the teacher")
    teacher = _teacher(manifest, model)
    sample = load_texts(texts, limit=max_texts)
    inputs = _inputs(root, manifest, sample, list(teacher.input_names))
    say(f"running the teacher on {len(sample)} texts")
    reference = teacher.run(inputs)

    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    per_artifact: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="edgekit-arm-"))
    try:
        inputs_npz = work / "inputs.npz"
        np.savez(inputs_npz, **inputs)
        timeout = 300 + 60 * len(sample)
        host: dict[str, tuple[np.ndarray, dict[str, Any], dict[str, float]]] = {}
        for artifact in chosen:
            say(f"x86: {artifact.path.name}")
            try:
                x86, x86_info = _x86(artifact, inputs)
            except Exception as exc:
                raise UserError(
                    f"{artifact.path.name} cannot be run on this host ({exc.__class__.__name__}: {str(exc).strip()[:160]}); "
                    "re-export it ('edgekit export --force')"
                ) from exc
            host[artifact.path.name] = (x86, x86_info, fidelity(teacher.task, reference, x86.reshape(len(x86), -1)))
        runs = [(artifact, cpu) for artifact in chosen for cpu in cpus]
        done: list[str] = []

        def guest_run(job: tuple[Any, str]) -> tuple[dict, np.ndarray | None, float]:
            t0 = time.perf_counter()
            guest, arm = _run_guest(env, job[0], job[1], inputs_npz, work, xnnpack, timeout)
            done.append(job[0].path.name)
            say(f"arm64 (emulated, {len(sample)} texts, {jobs} at a time): {len(done)}/{len(runs)} runs done")
            return guest, arm, time.perf_counter() - t0

        say(f"arm64 (emulated, {len(sample)} texts, {jobs} at a time): 0/{len(runs)} runs done")
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is its own emulator process
            results = list(pool.map(guest_run, runs))
        arm_outputs: dict[str, dict[str, np.ndarray]] = {}
        for (artifact, cpu), (guest, arm, seconds) in zip(runs, results, strict=True):
            name = artifact.path.name
            x86, x86_info, x86_fid = host[name]
            if arm is None:
                runtime = "LiteRT" if artifact.format == "tflite" else "onnxruntime"
                raise UserError(
                    f"{name} cannot be run by the aarch64 {runtime} on {cpu} ({guest.get('error', 'no result')}); "
                    f"check it runs on the host ('edgekit profile {root} --runner host') and re-export it ('edgekit export --force')"
                )
            row: dict[str, Any] = {
                "artifact": name,
                "format": artifact.format,
                "precision": artifact.precision,
                "cpu": cpu,
                "emulated_wall_seconds": round(seconds, 1),
                "guest": {k: v for k, v in guest.items() if k not in ("outputs",)},
                "cpu_features": _features(guest),
                "x86": x86_info,
                "x86_vs_teacher": x86_fid,
            }
            if artifact.format == "tflite":
                row["xnnpack"] = {
                    "arm": guest.get("xnnpack_delegated_nodes"),
                    "x86": x86_info.get("xnnpack_delegated_nodes"),
                    "nodes": guest.get("nodes", x86_info.get("nodes")),
                    "expected": True,
                    "requested": xnnpack,
                }
            arm_outputs.setdefault(name, {})[cpu] = arm
            row["arm_vs_teacher"] = fidelity(teacher.task, reference, arm.reshape(len(arm), -1))
            row["arm_vs_x86"] = compare(arm, x86)
            row["failures"] = check_row(artifact.format, artifact.precision, guest, row["arm_vs_x86"], row["arm_vs_teacher"], x86_fid)
            row["status"] = "fail" if row["failures"] else "pass"
            x = row.get("xnnpack")
            if x and x["arm"] and x["x86"] is not None and x["arm"] != x["x86"]:
                row["notes"] = [f"XNNPACK took {x['arm']} nodes on ARM but {x['x86']} on x86: the kernel paths differ"]
            failures += [f"{name} on {cpu}: {f}" for f in row["failures"]]
            rows.append(row)
        for name, (_x86_out, _info, x86_fid) in host.items():
            values = list(arm_outputs.get(name, {}).values())
            spread = max((float(np.abs(v.astype(np.float64) - values[0]).max()) for v in values[1:]), default=None)
            per_artifact[name] = {"x86_vs_teacher": x86_fid, "max_abs_between_cpus": spread}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info = env.info()
    data = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(root),
        "device": report["device"]["name"],
        "display_name": report["device"].get("display_name", report["device"]["name"]),
        "arch": arch,
        "cpus": cpus,
        "task": teacher.task,
        "n_texts": len(sample),
        "seq_len": int(inputs["input_ids"].shape[1]),
        "provenance": "emulated-arm64 (QEMU user mode, real aarch64 runtime builds; numerics only, never latency)",
        "method": (
            "each artifact run at batch 1 with 1 thread by the aarch64 builds of its runtime under QEMU user-mode emulation per CPU model, "
            "and on this x86 host with the same runtime version; the teacher recomputed on the host from the manifest's source model. "
            "Linux aarch64 builds, not Android's (same kernel sources); NNAPI and GPU delegates are not covered."
        ),
        "tolerances": {
            "float_max_abs_rel": FLOAT_TOLERANCE,
            "int8_max_fidelity_drop": INT8_MAX_FIDELITY_DROP,
            "mismatch_rel": MISMATCH_REL,
        },
        "mismatch_definition": MISMATCH_DEFINITION,
        "environment": {k: info.get(k) for k in ("qemu", "versions", "rootfs", "mirror")} | {"home": str(env.home)},
        "rows": rows,
        "artifacts": per_artifact,
        "failures": failures,
        "passed": not failures,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "parallel_emulator_processes": jobs,
    }
    json_path, html_path = _write(root, arch, data)
    result = ArmVerifyResult(data, json_path, html_path, failures)
    if failures and raise_on_failure:
        raise ArmCheckFailed(result.failure_message())
    return result


def _write(root: Path, arch: str, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write `verify/<arch>.json|.html` via temporary files renamed into place: never a half-written report."""
    from edgekit.report.arm_html import render_arm_html

    out_dir = root / "verify"
    out_dir.mkdir(exist_ok=True)
    json_path, html_path = out_dir / f"{arch}.json", out_dir / f"{arch}.html"
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}.partial-", dir=out_dir))
    try:
        write_json(tmp / json_path.name, data)
        (tmp / html_path.name).write_text(render_arm_html(data), encoding="utf-8")
        os.replace(tmp / json_path.name, json_path)
        os.replace(tmp / html_path.name, html_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json_path, html_path
