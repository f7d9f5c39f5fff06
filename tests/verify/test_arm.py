"""`edgekit verify BUNDLE --arch arm64` and `edgekit setup-arm`.

The emulated runs use the real aarch64 onnxruntime / LiteRT builds under QEMU (prepared by
`edgekit setup-arm`). Without that environment these tests skip locally and FAIL under CI ($CI set),
whose .ci/run prepares it. The checker tests at the bottom need no emulator: they feed the real
check functions made-up guest results.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import api
from edgekit.verify.arm import FLOAT_TOLERANCE, ArmCheckFailed, check_row, compare, verify_arm
from edgekit.verify.arm_env import ArmEnv, arm_home
from tests.conftest import run_cli

#: fp32 ARM vs x86 on the tiny model must agree to fp32 round-off: this absolute bound (outputs are O(1)).
FP32_ROUND_OFF = 1e-5


def _require_arm_env() -> None:
    missing = ArmEnv(arm_home()).missing()
    if missing:
        message = f"arm64 emulation environment not prepared ({missing}): run 'edgekit setup-arm'"
        if os.environ.get("CI"):
            pytest.fail(message + " — CI must run the ARM numerics tests (.ci/run prepares the environment)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def bundle(tiny_model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arm") / "pixel4"
    api.export(
        device="pixel4",
        model=tiny_model_dirs["bert-embedding"],
        formats=["onnx", "tflite"],
        precisions=["fp32", "int8"],
        out=out,
        max_texts=8,
        latency_repeats=2,
    )
    return out


def test_every_artifact_on_arm_matches_x86_and_the_teacher(bundle):
    _require_arm_env()
    proc = run_cli("verify", str(bundle), "--arch", "arm64", "--cpu", "cortex-a76", "--max-texts", "4")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads((bundle / "verify" / "arm64.json").read_text())
    rows = {r["artifact"]: r for r in data["rows"]}
    assert set(rows) == {"model-fp32.onnx", "model-int8.onnx", "model-fp32.tflite", "model-int8.tflite"}
    assert data["passed"] and data["n_texts"] == 4 and data["cpus"] == ["cortex-a76"]
    for name, row in rows.items():
        assert row["status"] == "pass", row["failures"]
        assert row["guest"]["cpu"]["machine"] == "aarch64" and not row["guest"]["cpu"]["cpuinfo_is_x86"]
        assert row["cpu_features"]["dotprod"]  # cortex-a76 has the dot-product int8 instructions
        assert row["arm_vs_teacher"]["cosine_mean"] > 0.99
        if row["precision"] == "fp32":
            assert row["arm_vs_x86"]["max_abs"] <= FP32_ROUND_OFF and row["arm_vs_x86"]["mismatches"] == 0, name
        if row["format"] == "tflite":
            assert row["xnnpack"]["arm"] > 0 and row["xnnpack"]["arm"] == row["xnnpack"]["x86"]
    html = (bundle / "verify" / "arm64.html").read_text()
    assert "ARM numerics (emulated)" in html and "Per-CPU sweep" in html and "model-int8.tflite" in html
    assert "not latency" in proc.stdout
    assert not list((bundle / "verify").glob(".*partial*"))


def test_xnnpack_silently_not_applied_is_a_failure(bundle):
    _require_arm_env()
    # The guest runs LiteRT without its default delegate (a real interpreter setting): the check must fail it.
    with pytest.raises(ArmCheckFailed) as exc:
        verify_arm(bundle, cpus=["cortex-a55"], max_texts=2, artifacts=["model-fp32.tflite"], xnnpack=False)
    assert exc.value.exit_code == 3 and "XNNPACK was not applied" in str(exc.value)
    data = json.loads((bundle / "verify" / "arm64.json").read_text())  # the report is written, marked failed
    (row,) = data["rows"]
    assert data["passed"] is False and row["status"] == "fail" and row["xnnpack"]["arm"] == 0
    assert any("XNNPACK was not applied" in f for f in data["failures"])
    assert row["arm_vs_x86"]["max_abs"] < 1e-3  # the numbers may be fine: it is the kernel path that is wrong


def test_unknown_cpu_is_exit_2(bundle):
    proc = run_cli("verify", str(bundle), "--cpu", "cortex-a99")
    assert proc.returncode == 2 and "unknown CPU model 'cortex-a99'" in proc.stderr and "cortex-a55" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_environment_not_prepared_is_exit_2_and_writes_nothing(bundle, tmp_path):
    env = dict(os.environ, EDGEKIT_ARM_HOME=str(tmp_path / "empty"))
    old = os.environ.copy()
    os.environ.update(env)
    try:
        before = set((bundle / "verify").glob("*")) if (bundle / "verify").exists() else set()
        proc = run_cli("verify", str(bundle), "--cpu", "cortex-a55")
        after = set((bundle / "verify").glob("*")) if (bundle / "verify").exists() else set()
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert proc.returncode == 2 and "not prepared" in proc.stderr and "edgekit setup-arm" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and before == after


def test_not_a_bundle_and_bad_arch_are_exit_2(tmp_path, bundle):
    proc = run_cli("verify", str(tmp_path), "--cpu", "cortex-a55")
    assert proc.returncode == 2 and "not an edgekit bundle" in proc.stderr
    proc = run_cli("verify", str(bundle), "--arch", "riscv64")
    assert proc.returncode == 2 and "unknown --arch 'riscv64'" in proc.stderr


def test_artifact_that_cannot_load_is_exit_2(bundle, tmp_path):
    _require_arm_env()
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("verify"))
    (broken / "model-fp32.tflite").write_bytes(b"not a flatbuffer" * 64)
    proc = run_cli("verify", str(broken), "--cpu", "cortex-a55", "--artifact", "model-fp32.tflite", "--max-texts", "2")
    assert proc.returncode == 2 and "model-fp32.tflite cannot be run" in proc.stderr and "re-export" in proc.stderr
    assert not (broken / "verify" / "arm64.json").exists()


def test_setup_arm_says_in_one_line_what_is_missing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    old = os.environ.get("EDGEKIT_ARM_HOME")
    os.environ["EDGEKIT_ARM_HOME"] = str(blocker / "arm64")
    try:
        proc = run_cli("setup-arm")
    finally:
        os.environ.pop("EDGEKIT_ARM_HOME") if old is None else os.environ.__setitem__("EDGEKIT_ARM_HOME", old)
    assert proc.returncode == 2 and "EDGEKIT_ARM_HOME" in proc.stderr and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error")]) == 1


# --------------------------------------------------------------------------------------------
# the checker on made-up guest results (no emulator needed)

ARM_CPU = {"machine": "aarch64", "features": ["fp", "asimd", "asimddp"], "cpuinfo_is_x86": False}


def test_checker_fails_a_tflite_run_without_xnnpack_and_an_x86_cpuinfo():
    same = compare(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32))
    assert check_row("tflite", "fp32", {"cpu": ARM_CPU, "xnnpack_delegated_nodes": 131}, same) == []
    assert any("XNNPACK was not applied" in f for f in check_row("tflite", "fp32", {"cpu": ARM_CPU, "xnnpack_delegated_nodes": 0}, same))
    assert any("XNNPACK was not applied" in f for f in check_row("tflite", "int8", {"cpu": ARM_CPU}, same))
    leaked = dict(ARM_CPU, cpuinfo_is_x86=True)
    assert any("aarch64" in f for f in check_row("onnx", "fp32", {"cpu": leaked}, same))
    assert check_row("onnx", "fp32", {"cpu": ARM_CPU}, same) == []


def test_checker_tolerances_and_mismatch_count():
    x86 = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    round_off = compare(x86 + np.float32(3e-7), x86)
    assert round_off["mismatches"] == 0 and check_row("onnx", "fp32", {"cpu": ARM_CPU}, round_off) == []
    drifted = x86.copy()
    drifted[0, :3] += 10 * FLOAT_TOLERANCE
    drift = compare(drifted, x86)
    assert drift["mismatches"] == 3 and drift["identical"] == 61
    assert any("round-off tolerance" in f for f in check_row("onnx", "fp32", {"cpu": ARM_CPU}, drift))
    # int8: ARM vs x86 differences are reported; the gate is ARM's fidelity to the teacher against x86's
    assert check_row("onnx", "int8", {"cpu": ARM_CPU}, drift, {"cosine_mean": 0.990}, {"cosine_mean": 0.991}) == []
    worse = check_row("onnx", "int8", {"cpu": ARM_CPU}, drift, {"cosine_mean": 0.980}, {"cosine_mean": 0.991})
    assert any("further from the teacher than on x86" in f for f in worse)
    q = compare(np.array([[3, 4, 5]], np.int8), np.array([[3, 5, 5]], np.int8))  # integer outputs: one step counts
    assert q["mismatches"] == 1 and q["max_abs"] == 1
