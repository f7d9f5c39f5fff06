"""The adb runner against a FAKE adb (tests/fixtures/fake_adb, a test double that replays recorded
benchmark_model output) and the benchmark_model output parser against recorded and published outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from converters.base import Artifact, TensorSpec
from edgekit.errors import UserError
from edgekit.profiles import load_profile
from edgekit.verify import adb
from edgekit.verify.adb import (
    DEVICE_DIR,
    AdbNotFound,
    BenchmarkModelNotFound,
    DeviceNotReady,
    DeviceUnauthorized,
    MultipleDevices,
    NoDevice,
    benchmark_on_device,
    delegates_for_profile,
    elf_abi,
    find_benchmark_model,
    parse_benchmark_output,
    parse_devices,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FAKE_ADB = FIXTURES / "fake_adb"
REC = FIXTURES / "adb"
SERIAL = "9A281FFAZ006EP"
TOOL = f"{DEVICE_DIR}/benchmark_model"
EM_AARCH64, EM_ARM, EM_X86_64 = 183, 40, 62


def bare_path(tmp_path: Path) -> str:
    """A PATH with no adb and no benchmark_model, that still finds python3 for the fake adb's shebang."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return os.pathsep.join([str(empty), str(Path(sys.executable).parent)])


def fake_elf(path: Path, machine: int, *, bits64: bool = True) -> Path:
    """A file with a valid little-endian ELF header for `machine` (enough for elf_abi; never executed)."""
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2 if bits64 else 1
    header[5] = 1
    header[6] = 1
    header[16:18] = (3).to_bytes(2, "little")  # ET_DYN
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header) + b"/system/bin/linker64\x00")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Environment for the fake adb: a log, a Pixel 4 device, recorded outputs per delegate, a benchmark_model."""
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.delenv("FAKE_ADB_DEVICES", raising=False)
    monkeypatch.delenv("FAKE_ADB_PROPS", raising=False)
    monkeypatch.delenv("FAKE_ADB_FAIL", raising=False)
    monkeypatch.delenv(adb.BENCHMARK_MODEL_ENV, raising=False)
    outputs = {"cpu": str(REC / "bm_cpu_xnnpack.txt"), "gpu": str(REC / "bm_gpu_failed.txt"), "nnapi": str(REC / "bm_nnapi_partial.txt")}
    monkeypatch.setenv("FAKE_ADB_OUTPUTS", json.dumps(outputs))
    tool = fake_elf(tmp_path / "android_aarch64_benchmark_model", EM_AARCH64)

    class Env:
        def __init__(self) -> None:
            self.log, self.tool, self.tmp = log, tool, tmp_path

        def calls(self) -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        def device_files(self) -> dict:
            state = Path(str(log) + ".state")
            return json.loads(state.read_text()) if state.exists() else {}

        def devices(self, name: str) -> None:
            monkeypatch.setenv("FAKE_ADB_DEVICES", str(REC / f"devices_{name}.txt"))

        def outputs(self, **files: str) -> None:
            monkeypatch.setenv("FAKE_ADB_OUTPUTS", json.dumps({k: str(REC / v) for k, v in files.items()}))

    return Env()


@pytest.fixture
def artifact(tmp_path) -> Artifact:
    """A .tflite artifact file (content irrelevant to the fake device; input flags need a real model, see below)."""
    path = tmp_path / "model-int8.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    specs = [TensorSpec("input_ids", "int32", (1, 128)), TensorSpec("attention_mask", "int32", (1, 128))]
    return Artifact("tflite", "int8", path, specs, [TensorSpec("embedding", "float32", (1, 384))])


def run(artifact: Artifact, fake, profile: str = "pixel4", **kwargs):
    return benchmark_on_device(
        artifact, load_profile(profile), adb=str(FAKE_ADB), benchmark_model=kwargs.pop("benchmark_model", fake.tool), **kwargs
    )


def shell_call(*words: str) -> list[str]:
    return ["-s", SERIAL, "shell", *words]


# --- the command sequence -----------------------------------------------------------------------


def test_pushes_runs_every_profile_delegate_and_cleans_up(fake, artifact):
    bench = run(artifact, fake, warmup_runs=5, num_runs=50)
    remote_model = f"{DEVICE_DIR}/model-int8.tflite"
    common = ["--num_threads=4", "--warmup_runs=5", "--num_runs=50"]
    expected = [
        ["devices", "-l"],
        shell_call("getprop", "ro.product.cpu.abi"),
        shell_call("getprop", "ro.product.cpu.abilist"),
        shell_call("getprop", "ro.product.model"),
        shell_call("mkdir", "-p", DEVICE_DIR),
        ["-s", SERIAL, "push", str(artifact.path), remote_model],
        ["-s", SERIAL, "push", str(fake.tool), TOOL],
        shell_call("chmod", "755", TOOL),
        shell_call(TOOL, f"--graph={remote_model}", *common, "--use_xnnpack=true", "--report_peak_memory_footprint=true"),
        shell_call(TOOL, f"--graph={remote_model}", *common, "--use_gpu=true", "--report_peak_memory_footprint=true"),
        shell_call(TOOL, f"--graph={remote_model}", *common, "--use_nnapi=true", "--report_peak_memory_footprint=true"),
        shell_call("rm", "-f", remote_model, TOOL),
        shell_call("rmdir", DEVICE_DIR),
    ]
    assert fake.calls() == expected
    assert fake.device_files() == {}  # nothing left on the device
    assert [r.delegate for r in bench.results] == ["cpu", "gpu", "nnapi"]
    assert bench.device.model == "Pixel 4" and bench.device.abi == "arm64-v8a" and bench.device.serial == SERIAL
    assert bench.benchmark_model == str(fake.tool)


def test_results_per_delegate_are_parsed_and_labelled_measured_device(fake, artifact):
    cpu, gpu, nnapi = run(artifact, fake).results
    assert cpu.ok and cpu.provenance == "measured-device" and cpu.threads == 4 and cpu.device_model == "Pixel 4"
    assert cpu.median_ms == pytest.approx(23.968) and cpu.latency_ms == cpu.median_ms
    assert cpu.avg_ms == pytest.approx(24.1635) and cpu.std_ms == pytest.approx(0.712)
    assert cpu.min_ms == pytest.approx(23.402) and cpu.max_ms == pytest.approx(27.764) and cpu.runs == 50
    assert cpu.init_ms == pytest.approx(211.837) and cpu.peak_memory_mb == pytest.approx(52.2305)
    assert cpu.delegation == "partial" and cpu.delegated_kernels == 1
    assert not gpu.ok and gpu.avg_ms is None
    assert "GPU delegate could not be applied" in gpu.error and "EMBEDDING_LOOKUP" in gpu.error
    assert gpu.cpu_fallback_ops == ["CAST", "EMBEDDING_LOOKUP"] and gpu.delegation == "failed"
    assert nnapi.ok and nnapi.median_ms is None and nnapi.latency_ms == pytest.approx(98.4557)
    assert nnapi.delegation == "partial" and nnapi.delegated_kernels == 12
    line = gpu.summary()
    assert "\n" not in line and line.startswith("Pixel 4 (gpu, 4 threads): not measured:")
    assert cpu.summary() == (
        "Pixel 4 (cpu, 4 threads): median 23.97 ms (std 0.71 ms, 50 runs), peak memory 52.2 MB; cpu delegation: partial [measured-device]"
    )
    data = json.loads(json.dumps(cpu.to_json()))
    assert data["provenance"] == "measured-device" and data["latency_ms"] == pytest.approx(23.968) and "output" not in data


def test_threads_and_delegates_follow_the_profile_or_the_caller(fake, artifact):
    run(artifact, fake, profile="pixel8", threads=2, delegates=["cpu"], warmup_runs=1, num_runs=10)
    bench_calls = [c for c in fake.calls() if TOOL in c and "--num_runs=10" in c]
    assert len(bench_calls) == 1
    assert "--num_threads=2" in bench_calls[0] and "--warmup_runs=1" in bench_calls[0] and "--use_xnnpack=true" in bench_calls[0]


def test_delegates_for_profiles():
    assert delegates_for_profile(load_profile("pixel4")) == ["cpu", "gpu", "nnapi"]  # Adreno (tflite-gpu-delegate), Hexagon (nnapi, qnn)
    assert delegates_for_profile(load_profile("pixel8")) == ["cpu", "gpu", "nnapi"]
    profile = load_profile("pixel4").model_copy(update={"accelerators": []})
    assert delegates_for_profile(profile) == ["cpu"]


def test_op_profiling_run_gives_a_device_op_profile(fake, artifact):
    fake.outputs(cpu="bm_cpu_op_profiling.txt")
    (cpu,) = run(artifact, fake, delegates=["cpu"], op_profiling=True).results
    assert "--enable_op_profiling=true" in fake.calls()[8]
    prof = cpu.op_profile
    assert cpu.ok and prof is not None and prof.provenance == "measured-device" and prof.threads == 4
    assert prof.by_type[0].op_type == "Fully Connected (NC, QD8, F32, QC8W) GEMM" and prof.by_type[0].share > 0.5
    assert sum(o.ms for o in prof.by_type) == pytest.approx(prof.op_total_ms)
    assert prof.op_total_ms == pytest.approx(prof.total_ms, rel=0.01)  # rows (3 decimals) vs "Timings (microseconds)"
    assert prof.total_ms == pytest.approx(22.955)
    assert [layer.name for layer in prof.by_layer] == ["unattributed"]  # XNNPACK op names carry no layer
    assert json.loads(json.dumps(cpu.to_json()))["op_profile"]["provenance"] == "measured-device"


def test_input_flags_give_a_real_model_a_full_mask(tiny_model_dirs, sample_texts, tmp_path, fake):
    """On a real exported .tflite: tensor names/order from the flatbuffer, mask = 1, ids in a vocab range."""
    from converters.base import ExportSpec, get_converter
    from edgekit.model import load_teacher

    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    inputs = teacher.tokenize(sample_texts[:2], 16)
    spec = ExportSpec("fp32", 16, teacher.input_names, [teacher.output_name], {k: v[:1] for k, v in inputs.items()})
    art = get_converter("tflite").lower(teacher.module, spec, tmp_path / "tfl")
    assert adb.input_flags(art) == [
        "--input_layer=serving_default_input_ids,serving_default_attention_mask",
        "--input_layer_shape=1,16:1,16",
        "--input_layer_value_range=serving_default_input_ids,1000,2000:serving_default_attention_mask,1,1",
    ]
    run(art, fake, delegates=["cpu"])
    bench_call = next(c for c in fake.calls() if TOOL in c[3:4])
    assert bench_call[-3:] == adb.input_flags(art)


# --- failure modes: specific UserErrors with one-line messages ----------------------------------


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in message and message
    return message


def test_no_adb(artifact, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", bare_path(tmp_path))
    monkeypatch.delenv("ANDROID_HOME", raising=False)
    monkeypatch.delenv("ANDROID_SDK_ROOT", raising=False)
    with pytest.raises(AdbNotFound) as exc:
        benchmark_on_device(artifact, load_profile("pixel4"))
    assert "adb not found" in one_line(exc) and "platform-tools" in str(exc.value)
    with pytest.raises(AdbNotFound) as exc:
        benchmark_on_device(artifact, load_profile("pixel4"), adb=str(tmp_path / "nope"))
    assert "adb not found at" in one_line(exc)


def test_adb_found_via_android_home(monkeypatch, tmp_path):
    tools = tmp_path / "sdk" / "platform-tools"
    tools.mkdir(parents=True)
    (tools / "adb").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", bare_path(tmp_path))
    monkeypatch.setenv("ANDROID_HOME", str(tmp_path / "sdk"))
    assert adb.find_adb() == str(tools / "adb")


@pytest.mark.parametrize(
    ("devices", "error", "words"),
    [
        ("none", NoDevice, "no Android device connected"),
        ("unauthorized", DeviceUnauthorized, "Allow USB debugging"),
        ("offline", DeviceNotReady, "offline"),
        ("two", MultipleDevices, "pass the serial"),
    ],
)
def test_device_problems(fake, artifact, devices, error, words):
    fake.devices(devices)
    with pytest.raises(error) as exc:
        run(artifact, fake)
    assert words in one_line(exc)
    assert not any("push" in c for c in fake.calls())  # nothing pushed


def test_serial_picks_one_of_several_devices_and_unknown_serial_is_reported(fake, artifact):
    fake.devices("two")
    bench = run(artifact, fake, serial=SERIAL, delegates=["cpu"])
    assert bench.results[0].ok and all(c[:2] == ["-s", SERIAL] for c in fake.calls()[1:])
    with pytest.raises(NoDevice) as exc:
        run(artifact, fake, serial="R58M00000")
    assert "R58M00000 is not connected" in one_line(exc) and SERIAL in str(exc.value)


def test_no_benchmark_model(fake, artifact, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", bare_path(tmp_path))
    with pytest.raises(BenchmarkModelNotFound) as exc:
        benchmark_on_device(artifact, load_profile("pixel4"), adb=str(FAKE_ADB))
    message = one_line(exc)
    assert "arm64-v8a" in message and "android_aarch64_benchmark_model" in message and adb.BENCHMARK_MODEL_ENV in message
    assert not any("push" in c for c in fake.calls())


def test_benchmark_model_for_the_wrong_abi_is_refused(fake, artifact, tmp_path):
    x86 = fake_elf(tmp_path / "benchmark_model", EM_X86_64)
    with pytest.raises(BenchmarkModelNotFound) as exc:
        run(artifact, fake, benchmark_model=x86)
    assert "x86_64" in one_line(exc) and str(x86) in str(exc.value)
    script = tmp_path / "not_elf"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BenchmarkModelNotFound) as exc:
        run(artifact, fake, benchmark_model=script)
    assert "not an ELF executable" in one_line(exc)


def test_benchmark_model_from_env_directory_matches_the_device_abis(monkeypatch, tmp_path):
    builds = tmp_path / "builds"
    builds.mkdir()
    arm64 = fake_elf(builds / "android_aarch64_benchmark_model", EM_AARCH64)
    arm = fake_elf(builds / "android_arm_benchmark_model", EM_ARM, bits64=False)
    monkeypatch.setenv(adb.BENCHMARK_MODEL_ENV, str(builds))
    monkeypatch.setenv("PATH", bare_path(tmp_path))
    assert find_benchmark_model(["arm64-v8a", "armeabi-v7a"]) == arm64
    assert find_benchmark_model(["armeabi-v7a", "armeabi"]) == arm
    assert elf_abi(arm64) == "arm64-v8a" and elf_abi(arm) == "armeabi-v7a" and elf_abi(FAKE_ADB) is None


def test_push_failure_and_device_lost_mid_run(fake, artifact, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_FAIL", "push")
    with pytest.raises(adb.AdbError) as exc:
        run(artifact, fake)
    assert "'adb push" in one_line(exc) and "No space left" in str(exc.value)
    monkeypatch.setenv("FAKE_ADB_FAIL", "shell")
    with pytest.raises(adb.AdbError) as exc:
        run(artifact, fake)
    assert "lost the device" in one_line(exc)
    assert fake.calls()[-2:] == [shell_call("rm", "-f", f"{DEVICE_DIR}/model-int8.tflite", TOOL), shell_call("rmdir", DEVICE_DIR)]


def test_wrong_format_or_platform(artifact, tmp_path):
    onnx_art = Artifact("onnx", "fp32", tmp_path / "m.onnx", [], [])
    with pytest.raises(UserError) as exc:
        benchmark_on_device(onnx_art, load_profile("pixel4"))
    assert "TFLite" in one_line(exc)
    with pytest.raises(UserError) as exc:
        benchmark_on_device(artifact, load_profile("iphone13"))
    assert "Android" in one_line(exc)


def test_failure_outputs_become_result_errors_not_exceptions(fake, artifact):
    fake.outputs(cpu="bm_old_binary_missing_gelu.txt")
    (cpu,) = run(artifact, fake, delegates=["cpu"]).results
    assert not cpu.ok
    assert cpu.error == "this benchmark_model is too old for the model (no kernel for GELU version 1); use a newer LiteRT benchmark_model"


# --- parsing ------------------------------------------------------------------------------------


def test_parse_devices_lines():
    devices = parse_devices((REC / "devices_one.txt").read_text())
    assert len(devices) == 1
    d = devices[0]
    assert (d.serial, d.state, d.model, d.product, d.device, d.transport_id) == (SERIAL, "device", "Pixel_4", "flame", "flame", "1")
    text = (
        "List of devices attached\nABC no permissions (missing udev rules? user is in the plugdev group); "
        "see [http://developer.android.com/tools/device.html] usb:1-2 transport_id:5\n"
    )
    (d,) = parse_devices(text)
    assert d.serial == "ABC" and d.state.startswith("no permissions") and d.transport_id == "5"
    with pytest.raises(DeviceNotReady) as exc:
        adb.select_device([d])
    assert "no permissions" in one_line(exc)


def test_parse_cpu_fixture():
    out = parse_benchmark_output((REC / "bm_cpu_xnnpack.txt").read_text())
    assert out.error is None
    assert (out.init_us, out.first_us, out.warmup_avg_us, out.inference_avg_us) == (211837, 41236, 24781.3, 24163.5)
    assert out.warmup.count == 21 and out.warmup.median == 23912
    s = out.inference
    assert (s.count, s.first, s.curr, s.min, s.max, s.avg, s.std, s.p5, s.median, s.p95) == (
        50, 23987, 24113, 23402, 27764, 24163.5, 712, 23511, 23968, 25890
    )  # fmt: skip
    assert (out.init_memory_mb, out.overall_memory_mb, out.peak_memory_mb, out.model_size_mb) == (38.4531, 44.1289, 52.2305, 23.6123)
    assert out.delegation == {"XNNPACK": "partial"} and out.delegated_kernels == {"XNNPACK": 1}
    assert out.replaced_nodes == [("TfLiteXNNPackDelegate", 359, 362, 2)]
    assert out.op_profile is None


def test_parse_gpu_failure_fixture():
    out = parse_benchmark_output((REC / "bm_gpu_failed.txt").read_text())
    assert out.inference_avg_us is None and out.inference is None
    assert out.gpu_unsupported_ops == ["CAST", "EMBEDDING_LOOKUP"] and out.gpu_split == (356, 6)
    assert out.delegation == {"GPU": "failed"}
    assert out.error == (
        "the GPU delegate could not be applied (unsupported ops: CAST, EMBEDDING_LOOKUP): "
        "TfLiteGpuDelegate Init: FULLY_CONNECTED: Expected 1 runtime input tensor(s), but node has 3 runtime input(s)."
    )


def test_parse_nnapi_fixture_without_percentiles():
    out = parse_benchmark_output((REC / "bm_nnapi_partial.txt").read_text())
    assert out.error is None and out.inference.median is None and out.inference.std == 2981
    assert out.inference_avg_us == 98455.7 and out.init_us == 1843210 and out.peak_memory_mb == 88.0117
    assert out.replaced_nodes == [("TfLiteNnapiDelegate", 62, None, 25)]
    assert out.delegation == {"NNAPI": "partial"} and out.delegated_kernels == {"NNAPI": 12}


def test_parse_published_outputs_scientific_notation_and_all_same():
    # Verbatim from a published TI AM62x run of benchmark_model (TensorFlow Lite 2.x with percentiles).
    text = """\
   INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
   INFO: count=1 curr=1357602 p5=1357602 median=1357602 p95=1357602

   INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
   INFO: count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 std=2565 p5=1238753 median=1239807 p95=1247415

   INFO: Inference timings in us: Init: 5579, First inference: 1357602, Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06
   INFO: Memory footprint delta from the start of the tool (MB): init=6.36328 overall=109.832
"""
    out = parse_benchmark_output(text)
    assert out.error is None and out.peak_memory_mb is None
    assert out.warmup.count == 1 and out.warmup.min == out.warmup.max == 1357602 and out.warmup.std == 0
    assert out.inference.avg == pytest.approx(1.24027e6) and out.inference.median == 1239807
    assert out.warmup_avg_us == pytest.approx(1.3576e6) and out.inference_avg_us == pytest.approx(1.24027e6)
    assert out.overall_memory_mb == pytest.approx(109.832)
    same = parse_benchmark_output("Running benchmark for at least 5 iterations\ncount=5 curr=1000(all same)\n")
    assert same.warmup.count == 5 and same.warmup.avg == same.warmup.min == same.warmup.max == 1000


def test_parse_tf21_output_without_log_prefixes():
    # Verbatim from a published TensorFlow 2.1-era run (no "INFO: " prefix, "Average inference timings").
    text = """\
Initialized session in 21.039ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=751932

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=747738 curr=747428 min=747331 max=748577 avg=747733 std=293

Average inference timings in us: Warmup: 751932, Init: 21039, no stats: 747733
"""
    out = parse_benchmark_output(text)
    assert out.error is None
    assert (out.init_us, out.warmup_avg_us, out.inference_avg_us, out.first_us) == (21039, 751932, 747733, None)
    assert out.inference.std == 293 and out.inference.median is None


def test_parse_op_profile_rows_in_default_legacy_and_csv_layouts():
    out = parse_benchmark_output((REC / "bm_cpu_op_profiling.txt").read_text())
    table = out.op_profile
    assert out.error is None and len(table.rows) == 264 and not table.delegate_rows
    first = table.rows[0]
    assert first.op_type == "EMBEDDING_LOOKUP" and first.name.endswith("Embedding_word_embeddings;2]:1") and first.times_called == 1
    assert table.rows[3].op_type == "Add (ND, F32)" and table.rows[3].name == "Delegate/Add (ND, F32):0"
    assert table.run_total.avg == 22955  # the regular runs' table, not the initialization one (11409 us)
    # TF < 2.3 layout: an extra [start] column.
    row = "\t" + "\t".join(["CONV_2D".rjust(32), "0.000", "5.567", "7.237", " 6.297%", " 6.297%", "0.000", "1", "[MobilenetV2/Conv/Relu6]"])
    legacy = adb._parse_row(row)
    assert (legacy.op_type, legacy.first_ms, legacy.avg_ms, legacy.percent, legacy.name) == (
        "CONV_2D",
        5.567,
        7.237,
        6.297,
        "[MobilenetV2/Conv/Relu6]",
    )
    csv = adb._parse_row("CONV_2D, 0.11, 0.0930388, 44.8994%, 44.8994%, 0, 2, [sequential_11/conv2d_33/Conv2D]:0")
    assert (csv.op_type, csv.avg_ms, csv.times_called, csv.ms_per_run) == ("CONV_2D", 0.0930388, 2, pytest.approx(0.1860776))
    csv_start = adb._parse_row("ELU, 0.0931277, 0.034, 0.0300884, 14.5203%, 59.4197%, 0, 1, [sequential_11/conv2d_33/Elu]:1")
    assert (csv_start.op_type, csv_start.first_ms, csv_start.avg_ms) == ("ELU", 0.034, 0.0300884)


def test_delegate_internal_rows_replace_the_delegate_kernel():
    text = """\
INFO: Inference timings in us: Init: 1, First inference: 2, Warmup (avg): 3, Inference (avg): 4
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                        EMBEDDING_LOOKUP\t    0.100\t    0.100\t 10.000%\t 10.000%\t     0.000\t        1\t[emb]:0
\t                   TfLiteXNNPackDelegate\t    0.900\t    0.900\t 90.000%\t100.000%\t     0.000\t        1\t[out]:5

Timings (microseconds): count=10 first=1000 curr=1000 min=990 max=1010 avg=1000 std=5
Delegate internal:
============================== Run Order ==============================
\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t DelegateOpInvoke\t 0.300\t 0.300\t 33.333%\t 33.333%\t 0.000\t 2\tDelegate/Fully Connected (NC, F32) GEMM:0
\t DelegateOpInvoke\t 0.300\t 0.300\t 33.333%\t 66.667%\t 0.000\t 1\tDelegate/Softmax (NC, F32):1
"""
    table = parse_benchmark_output(text).op_profile
    assert [(n, t, round(ms, 6)) for n, t, ms in table.node_times()] == [
        ("[emb]:0", "EMBEDDING_LOOKUP", 0.1),
        ("Delegate/Fully Connected (NC, F32) GEMM:0", "Fully Connected (NC, F32) GEMM", 0.6),
        ("Delegate/Softmax (NC, F32):1", "Softmax (NC, F32)", 0.3),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "INFO: STARTING!\nERROR: Could not open '/x.tflite'.\nERROR: Failed to load model /x.tflite\nERROR: Benchmarking failed.\n",
            "the model failed to load",
        ),
        ("ERROR: Failed to allocate tensors!\nERROR: Benchmarking failed.\n", "failed to allocate tensors"),
        (
            'CANNOT LINK EXECUTABLE "/data/local/tmp/edgekit/benchmark_model": library "libc++_shared.so" not found\n',
            "cannot start on the device",
        ),
        ("/system/bin/sh: /data/local/tmp/edgekit/benchmark_model: can't execute: Permission denied\n", "cannot run on the device"),
        ("", "printed no timings"),
    ],
)
def test_failure_reasons_are_one_line(text, reason):
    error = parse_benchmark_output(text).error
    assert reason in error and "\n" not in error


def test_nnapi_unsupported_platform_is_flagged(fake, artifact, tmp_path, monkeypatch):
    text = (
        (REC / "bm_cpu_xnnpack.txt")
        .read_text()
        .replace("INFO: Use xnnpack: [1]", "INFO: Use NNAPI: [1]\nWARN: NNAPI acceleration is unsupported on this platform.")
    )
    path = tmp_path / "nnapi_unsupported.txt"
    path.write_text(text)
    monkeypatch.setenv("FAKE_ADB_OUTPUTS", json.dumps({"nnapi": str(path)}))
    (nnapi,) = run(artifact, fake, delegates=["nnapi"]).results
    assert nnapi.ok and nnapi.delegation == "unsupported"
    assert any("NNAPI is unsupported on this device" in w for w in nnapi.warnings)
    assert "nnapi delegation: unsupported" in nnapi.summary()
