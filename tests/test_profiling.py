"""`edgekit profile BUNDLE --runner host|estimate|adb` on a tiny bundle, through the CLI.

The adb path runs against tests/fixtures/fake_adb, a TEST DOUBLE that replays recorded
`benchmark_model` output: it checks edgekit's command sequence and parsing, not a phone.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from edgekit import api
from tests.conftest import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def bundle(tiny_model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prof") / "pixel4"
    api.export(
        device="pixel4",
        model=tiny_model_dirs["bert-embedding"],
        formats=["onnx", "tflite"],
        precisions=["fp32", "int8"],
        out=out,
        max_texts=8,
        latency_repeats=3,
    )
    return out


def test_host_runner_measures_every_artifact_with_an_onnx_op_breakdown(bundle):
    proc = run_cli("profile", str(bundle), "--runner", "host", "--runs", "5")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((bundle / "profiles" / "pixel4-host.json").read_text())
    rows = {r["artifact"]: r for r in data["rows"]}
    assert set(rows) == {"model-fp32.onnx", "model-int8.onnx", "model-fp32.tflite", "model-int8.tflite"}
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["provenance"] == "measured-host" and row["threads"] >= 1
    by_type = rows["model-fp32.onnx"]["details"]["op_profile"]["by_type"]
    assert by_type and all(o["ms"] >= 0 for o in by_type) and abs(sum(o["share"] for o in by_type) - 1) < 0.05
    assert "op_profile_unavailable" in rows["model-fp32.tflite"]["details"]  # said, not hidden
    assert all(b["passed"] is None for b in data["budgets"])  # host timings never gate a device budget
    assert (bundle / "profiles" / "pixel4-host.html").read_text().count("model-int8.onnx") >= 1
    assert "top ops" in proc.stdout


def test_adb_runner_against_the_fake_adb(bundle, tmp_path):
    tool = tmp_path / "android_aarch64_benchmark_model"
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    header[16:18] = (3).to_bytes(2, "little")
    header[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    tool.write_bytes(bytes(header) + b"/system/bin/linker64\x00")
    tool.chmod(0o755)
    rec = FIXTURES / "adb"
    env = {
        "FAKE_ADB_LOG": str(tmp_path / "adb.log"),
        "FAKE_ADB_OUTPUTS": json.dumps(
            {"cpu": str(rec / "bm_cpu_xnnpack.txt"), "gpu": str(rec / "bm_gpu_failed.txt"), "nnapi": str(rec / "bm_nnapi_partial.txt")}
        ),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = run_cli(
            "profile",
            str(bundle),
            "--runner",
            "adb",
            "--adb",
            str(FIXTURES / "fake_adb"),
            "--benchmark-model",
            str(tool),
            "--allow-over-budget",
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((bundle / "profiles" / "pixel4-adb.json").read_text())
    rows = {r["artifact"]: r for r in data["rows"]}
    for name in ("model-fp32.tflite", "model-int8.tflite"):
        assert rows[name]["provenance"] == "measured-device" and rows[name]["latency_ms"] > 0
    assert rows["model-fp32.onnx"]["latency_ms"] is None and "benchmark_model" in rows["model-fp32.onnx"]["reason"]
    calls = [json.loads(line) for line in (tmp_path / "adb.log").read_text().splitlines()]
    assert any(any(str(a).startswith("--graph=") for a in c) for c in calls)


def test_adb_runner_without_adb_is_a_clear_message(bundle, tmp_path):
    env_path = os.environ["PATH"]
    os.environ["PATH"] = str(Path(sys.executable).parent)
    try:
        proc = run_cli("profile", str(bundle), "--runner", "adb")
    finally:
        os.environ["PATH"] = env_path
    assert proc.returncode == 2 and "adb" in proc.stderr and "Traceback" not in proc.stderr


def test_profile_of_a_non_bundle_is_user_error(tmp_path):
    proc = run_cli("profile", str(tmp_path), "--runner", "host")
    assert proc.returncode == 2 and "not an edgekit bundle" in proc.stderr


def test_unknown_runner(bundle):
    proc = run_cli("profile", str(bundle), "--runner", "quantum")
    assert proc.returncode == 2 and "unknown runner 'quantum'" in proc.stderr


def test_estimate_runner_predicts_device_latency_and_gates_the_budget(bundle, tmp_path):
    import yaml

    from edgekit.profiles import load_profile

    proc = run_cli("profile", str(bundle), "--runner", "estimate")
    assert proc.returncode == 0, proc.stderr
    assert "validation error" in proc.stdout and "median" in proc.stdout
    data = json.loads((bundle / "profiles" / "pixel4-estimate.json").read_text())
    for row in data["rows"]:
        assert row["provenance"] == "estimated-device" and row["latency_ms"] > 0 and row["threads"] == 4
        assert row["details"]["estimate"]["by_op_type"]
    assert data["validation"]["median_abs_error_pct"] <= 25
    # a budget no model can meet: exit 3, the profile still written, and --allow-over-budget accepts it
    strict = load_profile("pixel4").model_dump(mode="json")
    strict["name"] = "strict-pixel4"
    strict["budgets"]["latency_ms"] = 1e-6
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(strict))
    proc = run_cli("profile", str(bundle), "--device", str(path), "--runner", "estimate")
    assert proc.returncode == 3 and "latency budget missed" in proc.stderr
    assert (bundle / "profiles" / "strict-pixel4-estimate.json").is_file()
    assert run_cli("profile", str(bundle), "--device", str(path), "--runner", "estimate", "--allow-over-budget").returncode == 0
