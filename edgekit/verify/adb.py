"""Latency measured on a real Android device over adb, with LiteRT's `benchmark_model`.

`benchmark_on_device(artifact, profile)` finds `adb` and a connected, authorised device, reads
its ABI and model name, pushes the `.tflite` artifact and the `benchmark_model` binary built for
that ABI to `/data/local/tmp/edgekit/`, runs the benchmark once per delegate the profile
supports (CPU/XNNPACK always; GPU when an accelerator lists `tflite-gpu-delegate`; NNAPI when
one lists `nnapi`) with the profile's thread count, parses latency and memory from the tool's
output and removes what it pushed. Every number is `measured-device`.

Anything missing on the way (no adb, no device, an unauthorised or offline device, several
devices and no serial, no `benchmark_model` for the device's ABI) raises a subclass of
`AdbError` (a `UserError`) whose message is one line saying what to do: callers such as
`export` turn it into a report line instead of failing. A delegate that fails on the device
(GPU delegate refused the graph, model failed to load...) is not an exception: its
`BenchmarkResult` carries `error` and the other delegates still run.

Output formats parsed (see `parse_benchmark_output`), as printed by LiteRT / TensorFlow Lite's
`tflite/tools/benchmark/benchmark_model.cc` and `benchmark_tflite_model.cc`, with run
statistics from `tsl::Stat::OutputToStream` (`xla/tsl/util/stats_calculator.h`, older
TensorFlow: `tensorflow/core/util/stats_calculator.h`) and the op profile from
`tsl::StatsCalculator` (`stats_calculator.cc`) via `tflite/profiling/profile_summary_formatter.cc`:

    INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
    INFO: count=50 first=12345 curr=12001 min=11890 max=12890 avg=12100.5 std=211 p5=11900 median=12050 p95=12500
    INFO: count=1 curr=1357602 p5=1357602 median=1357602 p95=1357602      (all runs equal; "(all same)" when count > 1)
    INFO: count=50 first=... avg=1.24027e+06 std=2565                       (avg in scientific notation above 1e6 us;
                                                                             no p5/median/p95 before StatWithPercentiles)
    INFO: Inference timings in us: Init: 5579, First inference: 1357602, Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06
    INFO: Memory footprint delta from the start of the tool (MB): init=6.36328 overall=109.832
    INFO: Overall peak memory footprint (MB) via periodic monitoring: 56.7
    INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 12 delegate kernels.
    ERROR: Failed to apply GPU delegate.
    ERROR: Benchmarking failed.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from converters.base import Artifact
from edgekit.errors import UserError
from edgekit.profiles import DeviceProfile

#: Provenance of every number this module produces.
MEASURED_DEVICE = "measured-device"
#: Where artifacts and the tool go on the device (world-writable scratch space adb shell can exec from).
DEVICE_DIR = "/data/local/tmp/edgekit"
#: Environment variable naming the benchmark_model binary (or a directory holding per-ABI builds).
BENCHMARK_MODEL_ENV = "EDGEKIT_BENCHMARK_MODEL"

#: Delegates edgekit benchmarks, and the benchmark_model flag that selects each.
DELEGATE_FLAGS = {
    "cpu": "--use_xnnpack=true",  # XNNPACK: the CPU path apps get by default
    "gpu": "--use_gpu=true",
    "nnapi": "--use_nnapi=true",
    "cpu-builtin": "--use_xnnpack=false",  # builtin kernels only (op profiles keep tensor names)
}
#: Name benchmark_model prints for each delegate ("Explicitly applied GPU delegate ...").
_TOOL_DELEGATE_NAME = {"cpu": "XNNPACK", "gpu": "GPU", "nnapi": "NNAPI"}
#: Profile accelerator runtimes that enable a delegate.
_RUNTIME_TO_DELEGATE = {"tflite-gpu-delegate": "gpu", "nnapi": "nnapi"}

#: ELF e_machine -> Android ABI.
_ELF_ABI = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86"}
#: Names of the prebuilt LiteRT/TFLite binaries per ABI (nightly builds), then the generic name.
_ABI_BINARY_NAMES = {
    "arm64-v8a": ("android_aarch64_benchmark_model",),
    "armeabi-v7a": ("android_arm_benchmark_model",),
    "armeabi": ("android_arm_benchmark_model",),
    "x86_64": ("android_x86_64_benchmark_model",),
    "x86": ("android_x86_benchmark_model",),
}
_HOST_BINARY_NAMES = {"x86_64": ("linux_x86-64_benchmark_model",), "arm64-v8a": ("linux_aarch64_benchmark_model",)}


# ---------------------------------------------------------------------------------------------
# Errors: one line each, saying what to do
# ---------------------------------------------------------------------------------------------


class AdbError(UserError):
    """On-device measurement is not possible right now; the message says what to do."""


class AdbNotFound(AdbError):
    pass


class NoDevice(AdbError):
    pass


class DeviceUnauthorized(AdbError):
    pass


class DeviceNotReady(AdbError):
    """The device is listed but not usable (offline, no permissions, recovery...)."""


class MultipleDevices(AdbError):
    pass


class BenchmarkModelNotFound(AdbError):
    pass


# ---------------------------------------------------------------------------------------------
# Finding adb, devices and benchmark_model
# ---------------------------------------------------------------------------------------------


def find_adb(adb: str | os.PathLike[str] | None = None) -> str:
    """Path of the adb executable: `adb` if given, else PATH, else `$ANDROID_HOME`/`$ANDROID_SDK_ROOT` platform-tools."""
    if adb is not None:
        path = Path(adb)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(str(adb))
        if found:
            return found
        raise AdbNotFound(f"adb not found at {adb}; pass the path of an executable adb (Android SDK platform-tools)")
    found = shutil.which("adb")
    if found:
        return found
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        root = os.environ.get(var)
        if root and (Path(root) / "platform-tools" / "adb").is_file():
            return str(Path(root) / "platform-tools" / "adb")
    raise AdbNotFound(
        "adb not found: install Android platform-tools (e.g. 'apt-get install adb' or the Android SDK) and put adb on PATH "
        "or set ANDROID_HOME; device latency was not measured"
    )


@dataclass
class AdbDevice:
    """One line of `adb devices -l`."""

    serial: str
    state: str
    model: str | None = None
    product: str | None = None
    device: str | None = None
    transport_id: str | None = None


_DEVICE_PROPS = ("usb", "product", "model", "device", "transport_id")


def parse_devices(output: str) -> list[AdbDevice]:
    """Devices listed by `adb devices -l` (daemon start-up chatter and the header are skipped).

    Lines look like `0123ABC  device usb:1-1 product:flame model:Pixel_4 device:flame transport_id:1`,
    `0123ABC  unauthorized usb:1-1 transport_id:2` or
    `0123ABC  no permissions (missing udev rules? user is in the plugdev group); see [...]`.
    """
    devices = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.lower().startswith("list of devices") or line.startswith("adb "):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        serial, rest = parts[0], parts[1:]
        state_words, props = [], {}
        for token in rest:
            key, sep, value = token.partition(":")
            if sep and key in _DEVICE_PROPS and value:
                props[key] = value
            elif not props:
                state_words.append(token)
        devices.append(
            AdbDevice(
                serial=serial,
                state=" ".join(state_words),
                model=props.get("model"),
                product=props.get("product"),
                device=props.get("device"),
                transport_id=props.get("transport_id"),
            )
        )
    return devices


def _check_adb_output(text: str, serial: str | None) -> None:
    """Raise the specific error for adb's own failure messages (not the device command's)."""
    low = text.lower()
    who = f"device {serial}" if serial else "the device"
    if "unauthorized" in low:
        raise DeviceUnauthorized(
            f"{who} is unauthorized: unlock it and accept the 'Allow USB debugging' prompt, then retry; device latency was not measured"
        )
    if "no devices/emulators found" in low or re.search(r"device '[^']*' not found", low):
        raise NoDevice(f"{who} is not connected (adb: {text.strip().splitlines()[0]}); connect it with USB debugging on and retry")
    if "device offline" in low:
        raise DeviceNotReady(f"{who} is offline: reconnect the cable or run 'adb reconnect', then retry")
    if "no permissions" in low or "insufficient permissions" in low:
        raise DeviceNotReady(f"{who} cannot be opened (no permissions): add a udev rule for it or run adb with access to USB, then retry")


class Adb:
    """Runs adb commands, optionally against one serial; adb-level failures raise `AdbError`s."""

    def __init__(self, exe: str, serial: str | None = None, timeout_s: float = 120) -> None:
        self.exe = exe
        self.serial = serial
        self.timeout_s = timeout_s

    def command(self, *args: str) -> list[str]:
        return [self.exe, *(["-s", self.serial] if self.serial else []), *args]

    def run(self, *args: str, timeout_s: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self.command(*args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s or self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise AdbError(
                f"'adb {' '.join(args[:2])}' timed out after {exc.timeout:.0f} s; check the device is awake and responsive, then retry"
            ) from exc
        except OSError as exc:
            raise AdbNotFound(f"adb at {self.exe} cannot be run ({exc.strerror or exc}); reinstall Android platform-tools") from exc
        if check and proc.returncode != 0:
            _check_adb_output(proc.stderr + proc.stdout, self.serial)
            detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[0]
            raise AdbError(f"'adb {' '.join(args[:2])}' failed: {detail[:300]}; check the device connection and retry")
        return proc

    def shell(self, *args: str, timeout_s: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("shell", *(shlex.quote(a) for a in args), timeout_s=timeout_s, check=check)

    def getprop(self, name: str) -> str:
        return self.shell("getprop", name).stdout.strip()


def list_devices(adb: str) -> list[AdbDevice]:
    return parse_devices(Adb(adb).run("devices", "-l").stdout)


def select_device(devices: list[AdbDevice], serial: str | None = None) -> AdbDevice:
    """The device to use: the one with `serial`, or the only one connected."""
    if serial is not None:
        match = [d for d in devices if d.serial == serial]
        if not match:
            listed = ", ".join(d.serial for d in devices) or "none"
            raise NoDevice(f"device {serial} is not connected (adb lists: {listed}); connect it or pass another serial")
        chosen = match[0]
    else:
        if not devices:
            raise NoDevice(
                "no Android device connected: plug one in with USB debugging enabled (adb devices lists none); "
                "device latency was not measured"
            )
        if len(devices) > 1:
            listed = ", ".join(f"{d.serial} ({d.state})" for d in devices)
            raise MultipleDevices(f"{len(devices)} devices connected ({listed}); pass the serial of the one to use")
        chosen = devices[0]
    if chosen.state == "device":
        return chosen
    if chosen.state == "unauthorized":
        raise DeviceUnauthorized(
            f"device {chosen.serial} is unauthorized: unlock it and accept the 'Allow USB debugging' prompt, then retry; "
            "device latency was not measured"
        )
    if chosen.state.startswith("no permissions"):
        raise DeviceNotReady(f"device {chosen.serial} cannot be opened (no permissions): add a udev rule for it, then retry")
    raise DeviceNotReady(f"device {chosen.serial} is '{chosen.state}', not ready: wait for it to boot or run 'adb reconnect', then retry")


@dataclass
class DeviceInfo:
    serial: str
    model: str
    abi: str
    abis: list[str]


def device_info(adb: Adb) -> DeviceInfo:
    abi = adb.getprop("ro.product.cpu.abi")
    abilist = adb.getprop("ro.product.cpu.abilist")
    model = adb.getprop("ro.product.model")
    if not abi:
        raise DeviceNotReady(f"device {adb.serial} did not report its CPU ABI (getprop ro.product.cpu.abi is empty); reboot it and retry")
    abis = [a for a in abilist.split(",") if a] or [abi]
    if abi not in abis:
        abis.insert(0, abi)
    return DeviceInfo(serial=adb.serial or "", model=model or "unknown", abi=abi, abis=abis)


def elf_abi(path: str | os.PathLike[str]) -> str | None:
    """Android ABI an ELF executable is built for (from e_machine), or None when the file is not ELF."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return _ELF_ABI.get(int.from_bytes(head[18:20], order), f"e_machine {int.from_bytes(head[18:20], order)}")


def _is_android_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"/system/bin/linker" in fh.read(8192)
    except OSError:
        return False


def _candidates(explicit: str | os.PathLike[str] | None, names: Sequence[str]) -> list[Path]:
    found: list[Path] = []

    def add_from(location: Path) -> None:
        if location.is_dir():
            found.extend(location / n for n in names if (location / n).is_file())
        elif location.is_file():
            found.append(location)

    if explicit is not None:
        add_from(Path(explicit))
        return found
    env = os.environ.get(BENCHMARK_MODEL_ENV)
    if env:
        add_from(Path(env))
    for name in names:
        hit = shutil.which(name)
        if hit:
            found.append(Path(hit))
    return list(dict.fromkeys(found))


def find_benchmark_model(abis: Sequence[str], benchmark_model: str | os.PathLike[str] | None = None) -> Path:
    """The `benchmark_model` binary to push to a device whose ABIs (preferred first) are `abis`.

    Looks at `benchmark_model` (a file, or a directory of per-ABI builds), else at
    `$EDGEKIT_BENCHMARK_MODEL` (same), else on PATH for the prebuilt names
    (`android_aarch64_benchmark_model`, ...) and `benchmark_model`; the first ELF built for one
    of the device's ABIs wins.
    """
    names = [n for abi in abis for n in _ABI_BINARY_NAMES.get(abi, ())] + ["benchmark_model"]
    candidates = _candidates(benchmark_model, names)
    wrong = []
    for path in candidates:
        abi = elf_abi(path)
        if abi in abis:
            return path
        wrong.append(f"{path} ({abi or 'not an ELF executable'})")
    primary = abis[0] if abis else "the device ABI"
    prebuilt = _ABI_BINARY_NAMES.get(primary, ("benchmark_model",))[0]
    if wrong:
        raise BenchmarkModelNotFound(
            f"no benchmark_model for {primary} (found {'; '.join(wrong)}); get LiteRT's {prebuilt} and pass its path "
            f"or set {BENCHMARK_MODEL_ENV}"
        )
    raise BenchmarkModelNotFound(
        f"LiteRT benchmark_model for {primary} not found: download the prebuilt {prebuilt} (LiteRT/TensorFlow Lite nightly) "
        f"and pass its path, set {BENCHMARK_MODEL_ENV}=/path/to/it, or put it on PATH; device latency was not measured"
    )


def find_host_benchmark_model(benchmark_model: str | os.PathLike[str] | None = None) -> Path | None:
    """A `benchmark_model` that runs on this machine, or None.

    An explicitly given path is trusted (it may be a wrapper script); a discovered one must be a
    non-Android ELF for this machine's architecture.
    """
    if benchmark_model is not None:
        path = Path(benchmark_model)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a"}.get(platform.machine().lower())
    if machine is None:
        return None
    for path in _candidates(None, [*_HOST_BINARY_NAMES.get(machine, ()), "benchmark_model"]):
        if elf_abi(path) == machine and not _is_android_elf(path) and os.access(path, os.X_OK):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------


def delegates_for_profile(profile: DeviceProfile) -> list[str]:
    """CPU (XNNPACK) always, then GPU and NNAPI when the profile's accelerators list their runtimes."""
    delegates = ["cpu"]
    for accel in profile.accelerators:
        for runtime in accel.runtimes:
            delegate = _RUNTIME_TO_DELEGATE.get(runtime)
            if delegate and delegate not in delegates:
                delegates.append(delegate)
    return delegates


def benchmark_flags(
    threads: int, delegate: str, warmup_runs: int, num_runs: int, *, op_profiling: bool = False, peak_memory: bool = True
) -> list[str]:
    """benchmark_model flags (without --graph) for one run."""
    if delegate not in DELEGATE_FLAGS:
        raise UserError(f"unknown delegate '{delegate}'; use one of {', '.join(DELEGATE_FLAGS)}")
    flags = [f"--num_threads={threads}", f"--warmup_runs={warmup_runs}", f"--num_runs={num_runs}", DELEGATE_FLAGS[delegate]]
    if peak_memory:
        flags.append("--report_peak_memory_footprint=true")
    if op_profiling:
        flags.append("--enable_op_profiling=true")
    return flags


def input_flags(artifact: Artifact) -> list[str]:
    """`--input_layer*` flags giving the model realistic inputs instead of benchmark_model's random ints.

    benchmark_model fills int32 inputs with random values in [0, 99] (or the type's range), which
    makes an attention mask of values up to 99 (inf/NaN after `(1 - mask) * min_float`). Here the
    mask is all ones (a full-length input), token ids lie in [1000, 2000] and token types are 0.
    Tensor names and order come from the flatbuffer (the interpreter's input order, which
    benchmark_model matches positionally); without the LiteRT interpreter no flags are added.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_path=str(artifact.path)).get_input_details()
    except Exception:
        return []
    names, shapes, ranges = [], [], []
    for detail in details:
        name = str(detail["name"])
        shape = [int(d) for d in detail["shape"]]
        if not shape or any(d <= 0 for d in shape) or "," in name or ":" in name:
            return []
        names.append(name)
        shapes.append(",".join(str(d) for d in shape))
        if "mask" in name:
            ranges.append(f"{name},1,1")
        elif "token_type" in name or "segment" in name:
            ranges.append(f"{name},0,0")
        elif "input_ids" in name:
            ranges.append(f"{name},1000,2000")
    flags = [f"--input_layer={','.join(names)}", f"--input_layer_shape={':'.join(shapes)}"]
    if ranges:
        flags.append(f"--input_layer_value_range={':'.join(ranges)}")
    return flags


# ---------------------------------------------------------------------------------------------
# Parsing benchmark_model output
# ---------------------------------------------------------------------------------------------

_NUM = r"(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<avg>{_NUM})"
)
#: TF 1.13-2.2: "Average inference timings in us: Warmup: 146161, Init: 4452, no stats: 137722" (later "..., Inference: 79760.9")
_TIMINGS_LEGACY = re.compile(
    rf"Average inference timings in us: Warmup: (?P<warmup>{_NUM}), Init: (?P<init>{_NUM}), (?:no stats|Inference): (?P<avg>{_NUM})"
)
_RUNNING = re.compile(r"Running benchmark for (?:at least )?(\d+) iterations")
_STAT_TOKEN = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUM})")
_MEM_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): init=({_NUM}) overall=({_NUM})")
_MEM_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): ({_NUM})")
_APPLIED_FULL = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be completely executed by the delegate")
_APPLIED_PARTIAL = re.compile(
    r"Explicitly applied (\S+) delegate, and the model graph will be partially executed by the delegate w/ (\d+) delegate kernels"
)
_APPLIED_NONE = re.compile(r"Though (\S+) delegate is explicitly applied, the model graph will not be executed by the delegate")
_UNSUPPORTED_PLATFORM = re.compile(r"(\S+) acceleration is unsupported on this platform")
_FAILED_DELEGATE = re.compile(r"Failed to apply (\S+) delegate")
_REPLACING = re.compile(r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \((\S+)\) node, yielding (\d+) partitions")
_GPU_SPLIT = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+)(?: operations will run)? on the CPU")
_GPU_OP_LINE = re.compile(r"^[A-Z][A-Z0-9_]*:")  # "GELU: Operation is not supported." / "DEQUANTIZE:"
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([^']+)' version '(\d+)'")
_LOG_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE|FATAL): ")


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class RunStats:
    """One `count=... first=... curr=... min=... max=... avg=... std=... [p5= median= p95=]` line, in microseconds."""

    count: int
    first: float | None = None
    curr: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    std: float | None = None
    p5: float | None = None
    median: float | None = None
    p95: float | None = None

    @classmethod
    def parse(cls, line: str) -> RunStats | None:
        tokens = dict(_STAT_TOKEN.findall(line))
        if "count" not in tokens:
            return None
        stats = cls(count=int(_num(tokens["count"])), **{k: _num(v) for k, v in tokens.items() if k != "count"})
        if stats.count > 0 and stats.min is None and stats.curr is not None:  # "count=N curr=X(all same)": every run took X
            stats.min = stats.max = stats.avg = stats.first = stats.curr
            stats.std = 0.0
        return stats


@dataclass
class ProfiledOp:
    """One row of an op-profiling table (times in ms as printed)."""

    op_type: str
    name: str
    first_ms: float
    avg_ms: float
    percent: float
    times_called: int

    @property
    def ms_per_run(self) -> float:
        return self.avg_ms * max(1, self.times_called)


@dataclass
class OpProfileTable:
    """`--enable_op_profiling=true` output for the regular runs: run-order rows of the primary graph
    and, when the delegate profiles its internals separately, the `Delegate internal:` rows."""

    rows: list[ProfiledOp] = field(default_factory=list)
    delegate_rows: list[ProfiledOp] = field(default_factory=list)
    run_total: RunStats | None = None
    delegate_total: RunStats | None = None

    def node_times(self) -> list[tuple[str, str, float]]:
        """(name, op type, ms per run) in run order; delegate kernels are replaced by the delegate's own op rows when printed."""
        rows = self.rows
        if self.delegate_rows:
            rows = [r for r in rows if "delegate" not in r.op_type.lower()] + self.delegate_rows
        return [(r.name, _op_type(r), r.ms_per_run) for r in rows]

    def to_profile(self, *, artifact: Artifact | None = None, artifact_name: str = "", **kwargs: Any):
        from edgekit.verify.op_profile import build_profile

        notes = list(kwargs.pop("notes", []))
        notes.append("benchmark_model --enable_op_profiling=true: per-op times of the regular runs")
        if self.delegate_rows:
            notes.append("delegate kernels broken down by the delegate's own profiler ('Delegate internal')")
        total = self.run_total.avg / 1e3 if self.run_total and self.run_total.avg is not None else None
        return build_profile(
            self.node_times(), artifact=artifact, artifact_name=artifact_name, fmt="tflite", total_ms=total, notes=notes, **kwargs
        )


def _op_type(row: ProfiledOp) -> str:
    """Delegate-internal rows are typed "DelegateOpInvoke"; their real op is in the name ("Delegate/<op>:<n>")."""
    if row.op_type == "DelegateOpInvoke" and row.name.startswith("Delegate/"):
        return row.name[len("Delegate/") :].rsplit(":", 1)[0]
    return row.op_type


_ROW = re.compile(  # "[node type] [start]? [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name]" ([start]: TF < 2.3)
    rf"^\s*(?P<type>\S.*?)\s+(?:(?P<start>{_NUM})\s+)?(?P<first>{_NUM})\s+(?P<avg>{_NUM})\s+(?P<pct>{_NUM})%\s+(?P<cdf>{_NUM})%\s+"
    rf"(?P<mem>{_NUM})\s+(?P<times>\d+)\s+(?P<name>\S.*?)\s*$"
)


def _parse_row(line: str) -> ProfiledOp | None:
    if "[node type]" in line.lower() or line.lower().startswith("node type,"):
        return None
    match = _ROW.match(line.replace("\t", "  "))
    if match:
        return ProfiledOp(
            match["type"].strip(), match["name"], _num(match["first"]), _num(match["avg"]), _num(match["pct"]), int(match["times"])
        )
    # CSV formatter (--op_profiling_output_mode=csv): "type, first, avg_ms, %, cdf%, mem KB, times called, name"
    # (TF < 2.3: a "start" column after type); commas inside names are written as tabs.
    parts = [p.strip() for p in line.split(", ")]
    if len(parts) == 9 and parts[4].endswith("%"):
        parts = parts[:1] + parts[2:]
    if len(parts) != 8 or not (parts[3].endswith("%") and parts[4].endswith("%")):
        return None
    op_type, first, avg, pct, _, _, times, name = parts
    try:
        return ProfiledOp(op_type, name, _num(first), _num(avg), _num(pct.rstrip("%")), int(times))
    except ValueError:
        return None


def _parse_op_profile(lines: list[str]) -> OpProfileTable | None:
    start = next((i for i, line in enumerate(lines) if "Operator-wise Profiling Info for Regular Benchmark Runs" in line), None)
    if start is None:
        return None
    table = OpProfileTable()
    context = "primary"  # primary | subgraph | delegate
    title = ""
    for raw in lines[start + 1 :]:
        line = _LOG_PREFIX.sub("", raw.rstrip("\n"))
        stripped = line.strip()
        if stripped.startswith("Subgraph (index:") and stripped.endswith(":"):
            context = "subgraph"
            continue
        if stripped.startswith("Primary graph"):
            context = "primary"
            continue
        if stripped.startswith("Delegate internal:"):
            context = "delegate"
            continue
        if stripped.startswith("=====") and stripped.endswith("====="):
            title = stripped.strip("= ").lower()
            continue
        if stripped.startswith("Timings (microseconds):"):
            stats = RunStats.parse(stripped)
            if context == "primary" and table.run_total is None:
                table.run_total = stats
            elif context == "delegate":
                table.delegate_total = stats
            continue
        if title != "run order" or context == "subgraph":
            continue
        row = _parse_row(line)
        if row is None:
            continue
        (table.delegate_rows if context == "delegate" else table.rows).append(row)
    return table if table.rows or table.delegate_rows else None


@dataclass
class BenchmarkOutput:
    """Everything `parse_benchmark_output` reads from one benchmark_model run (times in microseconds)."""

    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    warmup: RunStats | None = None
    inference: RunStats | None = None
    init_memory_mb: float | None = None
    overall_memory_mb: float | None = None
    peak_memory_mb: float | None = None
    model_size_mb: float | None = None
    delegation: dict[str, str] = field(default_factory=dict)  # tool delegate name -> full | partial | none | unsupported | failed
    delegated_kernels: dict[str, int] = field(default_factory=dict)
    replaced_nodes: list[tuple[str, int, int | None, int]] = field(default_factory=list)  # (delegate kernel, replaced, of, partitions)
    gpu_unsupported_ops: list[str] = field(default_factory=list)
    gpu_split: tuple[int, int] | None = None  # ops on GPU, ops left on CPU
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    op_profile: OpProfileTable | None = None


def _failure_reason(out: BenchmarkOutput, lines: list[str]) -> str:
    text = "\n".join(lines)
    missing = _MISSING_OP.search(text)
    if missing:
        return (
            f"this benchmark_model is too old for the model (no kernel for {missing[1]} version {missing[2]}); "
            "use a newer LiteRT benchmark_model"
        )
    failed = _FAILED_DELEGATE.search(text)
    if failed:
        reason = f"the {failed[1]} delegate could not be applied"
        if out.gpu_unsupported_ops:
            reason += f" (unsupported ops: {', '.join(out.gpu_unsupported_ops[:6])})"
        detail = next(
            (
                e
                for e in out.errors
                if not _FAILED_DELEGATE.search(e) and "Benchmarking failed" not in e and "not supported by GPU" not in e
            ),
            None,
        )
        return reason + (f": {detail}" if detail else "")
    for pattern, message in (
        (r"Failed to (?:mmap|load) model|Failed to initialize model loader|Could not open '", "the model failed to load on the device"),
        (r"Failed to allocate tensors", "the interpreter failed to allocate tensors (out of memory, or unsupported shapes)"),
        (r"Failed to initialize the interpreter", "the interpreter failed to initialize"),
        (r"CANNOT LINK EXECUTABLE", "benchmark_model cannot start on the device (missing shared library / wrong build)"),
        (
            r"not executable: (?:32|64)-bit ELF|can't execute|Permission denied|Exec format error|not found",
            "benchmark_model cannot run on the device",
        ),
    ):
        hit = re.search(pattern, text)
        if hit:
            line = next((x.strip() for x in lines if re.search(pattern, x)), "")
            return f"{message}: {_LOG_PREFIX.sub('', line)[:200]}"
    first = next((e for e in out.errors if "Benchmarking failed" not in e), None)
    if first:
        return first[:200]
    last = next((x.strip() for x in reversed(lines) if x.strip()), "no output")
    return f"benchmark_model printed no timings (last line: {last[:160]})"


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Read latency, memory, delegation and (when enabled) the op profile from benchmark_model's output.

    Works on the formats of TensorFlow Lite 2.x and LiteRT (see the module docstring): with or
    without the `INFO: ` prefixes, with or without percentiles, numbers in fixed or scientific
    notation. `error` is set (one line) when the run failed or printed no timings.
    """
    out = BenchmarkOutput()
    lines = text.replace("\r\n", "\n").split("\n")
    phase: int | None = None  # index of the "Running benchmark ..." block whose stats line comes next
    phases_seen = 0
    in_gpu_list = False
    for raw in lines:
        line = raw.strip()
        body = _LOG_PREFIX.sub("", line)
        if line.startswith("ERROR"):
            out.errors.append(body)
        elif line.startswith("WARN"):
            out.warnings.append(body)
        if in_gpu_list:
            split = _GPU_SPLIT.search(body)
            if split:
                out.gpu_split = (int(split[1]), int(split[2]))
                in_gpu_list = False
            elif _GPU_OP_LINE.match(body):
                out.gpu_unsupported_ops.append(body.split(":", 1)[0].strip())
                continue
            else:
                in_gpu_list = False
        if "operations are not supported by GPU delegate" in body:
            in_gpu_list = True
            continue
        split = _GPU_SPLIT.search(body)
        if split:
            out.gpu_split = (int(split[1]), int(split[2]))
        if _RUNNING.search(body):
            phase = phases_seen
            phases_seen += 1
            continue
        if phase is not None and body.startswith("count="):
            stats = RunStats.parse(body)
            if phase == 0:
                out.warmup = stats
            elif phase == 1:
                out.inference = stats
            phase = None
            continue
        if match := _TIMINGS.search(body):
            out.init_us, out.first_us = _num(match["init"]), _num(match["first"])
            out.warmup_avg_us, out.inference_avg_us = _num(match["warmup"]), _num(match["avg"])
        elif match := _TIMINGS_LEGACY.search(body):
            out.init_us, out.warmup_avg_us, out.inference_avg_us = _num(match["init"]), _num(match["warmup"]), _num(match["avg"])
        elif match := _MEM_DELTA.search(body):
            out.init_memory_mb, out.overall_memory_mb = _num(match[1]), _num(match[2])
        elif match := _MEM_PEAK.search(body):
            out.peak_memory_mb = _num(match[1])
        elif match := _MODEL_SIZE.search(body):
            out.model_size_mb = _num(match[1])
        elif match := _APPLIED_FULL.search(body):
            out.delegation[match[1]] = "full"
        elif match := _APPLIED_PARTIAL.search(body):
            out.delegation[match[1]] = "partial"
            out.delegated_kernels[match[1]] = int(match[2])
        elif match := _APPLIED_NONE.search(body):
            out.delegation[match[1]] = "none"
        elif match := _UNSUPPORTED_PLATFORM.search(body):
            out.delegation[match[1]] = "unsupported"
        elif match := _FAILED_DELEGATE.search(body):
            out.delegation[match[1]] = "failed"
        elif match := _REPLACING.search(body):
            out.replaced_nodes.append((match[3], int(match[1]), int(match[2]) if match[2] else None, int(match[4])))
    out.op_profile = _parse_op_profile(lines)
    failed = any("Benchmarking failed" in e for e in out.errors)
    if failed or out.inference_avg_us is None:
        out.error = _failure_reason(out, lines)
    return out


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _ms(us: float | None) -> float | None:
    return None if us is None or math.isnan(us) else us / 1e3


@dataclass
class BenchmarkResult:
    """One benchmark_model run on the device with one delegate. Times in ms, memory in MB."""

    delegate: str
    threads: int
    device_model: str
    device_serial: str
    abi: str
    command: list[str]
    error: str | None = None
    avg_ms: float | None = None
    median_ms: float | None = None  # None when the tool predates percentiles (then use avg_ms)
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p5_ms: float | None = None
    p95_ms: float | None = None
    runs: int | None = None
    first_ms: float | None = None
    warmup_avg_ms: float | None = None
    init_ms: float | None = None
    peak_memory_mb: float | None = None
    init_memory_mb: float | None = None
    overall_memory_mb: float | None = None
    model_size_mb: float | None = None
    delegation: str | None = None  # full | partial | none | unsupported | failed (None: not reported)
    delegated_kernels: int | None = None
    cpu_fallback_ops: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    op_profile: Any = None  # edgekit.verify.op_profile.OpProfile when op profiling was on
    provenance: str = MEASURED_DEVICE
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.avg_ms is not None

    @property
    def latency_ms(self) -> float | None:
        """The headline number: the median when the tool printed it, else the mean."""
        return self.median_ms if self.median_ms is not None else self.avg_ms

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("output")
        data["op_profile"] = self.op_profile.to_json() if self.op_profile is not None else None
        data["latency_ms"] = self.latency_ms
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        """One report line."""
        where = f"{self.device_model} ({self.delegate}, {self.threads} threads)"
        if not self.ok:
            return f"{where}: not measured: {self.error}"
        stat = "median" if self.median_ms is not None else "mean"
        text = f"{where}: {stat} {self.latency_ms:.2f} ms"
        if self.std_ms is not None:
            text += f" (std {self.std_ms:.2f} ms, {self.runs} runs)"
        if self.peak_memory_mb is not None:
            text += f", peak memory {self.peak_memory_mb:.1f} MB"
        if self.delegation in ("partial", "none", "unsupported"):
            text += f"; {self.delegate} delegation: {self.delegation}"
        return text + " [measured-device]"


def result_from_output(
    text: str, *, delegate: str, threads: int, device: DeviceInfo, command: list[str], artifact: Artifact | None = None
) -> BenchmarkResult:
    """A `BenchmarkResult` from the output of one benchmark_model run."""
    parsed = parse_benchmark_output(text)
    result = BenchmarkResult(
        delegate=delegate,
        threads=threads,
        device_model=device.model,
        device_serial=device.serial,
        abi=device.abi,
        command=command,
        error=parsed.error,
        warnings=parsed.warnings,
        output=text,
    )
    stats = parsed.inference
    result.avg_ms = _ms(parsed.inference_avg_us if parsed.inference_avg_us is not None else (stats.avg if stats else None))
    if stats is not None:
        result.median_ms, result.std_ms = _ms(stats.median), _ms(stats.std)
        result.min_ms, result.max_ms = _ms(stats.min), _ms(stats.max)
        result.p5_ms, result.p95_ms = _ms(stats.p5), _ms(stats.p95)
        result.runs = stats.count
    result.first_ms, result.warmup_avg_ms, result.init_ms = _ms(parsed.first_us), _ms(parsed.warmup_avg_us), _ms(parsed.init_us)
    result.peak_memory_mb, result.init_memory_mb, result.overall_memory_mb = (
        parsed.peak_memory_mb,
        parsed.init_memory_mb,
        parsed.overall_memory_mb,
    )
    result.model_size_mb = parsed.model_size_mb
    tool_name = _TOOL_DELEGATE_NAME.get(delegate)
    if tool_name in parsed.delegation:
        result.delegation = parsed.delegation[tool_name]
        result.delegated_kernels = parsed.delegated_kernels.get(tool_name)
    result.cpu_fallback_ops = parsed.gpu_unsupported_ops if delegate == "gpu" else []
    if result.delegation == "unsupported" and result.error is None:
        result.warnings.append(f"{tool_name} is unsupported on this device: the timings are of the CPU path")
    elif result.delegation == "none" and result.error is None:
        result.warnings.append(f"{tool_name} delegate took no op: the timings are of the CPU path")
    if parsed.op_profile is not None and result.ok:
        result.op_profile = parsed.op_profile.to_profile(
            artifact=artifact,
            runtime=f"litert benchmark_model ({delegate})",
            runtime_version="unknown",
            threads=threads,
            runs=stats.count if stats else 0,
            warmup=parsed.warmup.count if parsed.warmup else 0,
            provenance=MEASURED_DEVICE,
        )
    return result


@dataclass
class DeviceBenchmark:
    """All delegates' results for one artifact on one device."""

    artifact: str
    device: DeviceInfo
    benchmark_model: str
    results: list[BenchmarkResult]
    notes: list[str] = field(default_factory=list)
    provenance: str = MEASURED_DEVICE

    def best(self) -> BenchmarkResult | None:
        ok = [r for r in self.results if r.ok]
        return min(ok, key=lambda r: r.latency_ms) if ok else None

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "device": asdict(self.device),
            "benchmark_model": self.benchmark_model,
            "results": [r.to_json() for r in self.results],
            "notes": self.notes,
            "provenance": self.provenance,
        }


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def _remote_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def benchmark_on_device(
    artifact: Artifact,
    profile: DeviceProfile,
    *,
    adb: str | os.PathLike[str] | None = None,
    serial: str | None = None,
    benchmark_model: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    delegates: Sequence[str] | None = None,
    warmup_runs: int = 5,
    num_runs: int = 50,
    op_profiling: bool = False,
    timeout_s: float = 900,
) -> DeviceBenchmark:
    """Measure a `.tflite` artifact on the connected Android device, once per delegate.

    `threads` defaults to the profile's; `delegates` to `delegates_for_profile(profile)`.
    Raises an `AdbError` (one-line message) when no measurement is possible at all; a delegate
    that fails on the device is reported in its `BenchmarkResult.error` instead.
    """
    if artifact.format != "tflite":
        raise UserError(
            f"the adb runner measures TFLite artifacts with LiteRT benchmark_model; {artifact.name} is {artifact.format} "
            "(export --formats tflite, or use the host/estimate runners)"
        )
    if profile.os != "android":
        raise UserError(f"the adb runner needs an Android device profile; {profile.name} is {profile.os}")
    threads = threads or profile.threads
    if threads < 1 or warmup_runs < 0 or num_runs < 1:
        raise UserError(f"adb benchmark needs threads >= 1, warmup_runs >= 0, num_runs >= 1 (got {threads}, {warmup_runs}, {num_runs})")
    delegates = list(delegates) if delegates is not None else delegates_for_profile(profile)
    for delegate in delegates:
        if delegate not in DELEGATE_FLAGS:
            raise UserError(f"unknown delegate '{delegate}'; use one of {', '.join(DELEGATE_FLAGS)}")

    exe = find_adb(adb)
    device = select_device(list_devices(exe), serial)
    shell = Adb(exe, device.serial, timeout_s=timeout_s)
    info = device_info(shell)
    binary = find_benchmark_model(info.abis, benchmark_model)

    remote_model = f"{DEVICE_DIR}/{_remote_name(artifact.path.name)}"
    remote_tool = f"{DEVICE_DIR}/benchmark_model"
    extra_inputs = input_flags(artifact)
    results = []
    pushed: list[str] = []
    made_dir = False
    try:
        shell.shell("mkdir", "-p", DEVICE_DIR)
        made_dir = True
        shell.run("push", str(artifact.path), remote_model)
        pushed.append(remote_model)
        shell.run("push", str(binary), remote_tool)
        pushed.append(remote_tool)
        shell.shell("chmod", "755", remote_tool)
        for delegate in delegates:
            args = [
                remote_tool,
                f"--graph={remote_model}",
                *benchmark_flags(threads, delegate, warmup_runs, num_runs, op_profiling=op_profiling),
                *extra_inputs,
            ]
            proc = shell.shell(*args, check=False)
            # benchmark_model logs "ERROR: ..." itself; adb's own failures read "error: ..." / "adb: ...".
            adb_errors = [x for x in proc.stderr.splitlines() if x.startswith(("error:", "adb: "))]
            if adb_errors:
                _check_adb_output("\n".join(adb_errors), device.serial)
                raise AdbError(f"adb lost the device during the benchmark ({adb_errors[0][:120]}); reconnect it and retry")
            results.append(
                result_from_output(
                    proc.stdout + "\n" + proc.stderr, delegate=delegate, threads=threads, device=info, command=args, artifact=artifact
                )
            )
    finally:
        try:
            if pushed:
                shell.shell("rm", "-f", *pushed, check=False)
            if made_dir:
                shell.shell("rmdir", DEVICE_DIR, check=False)
        except AdbError:
            pass  # the device went away: nothing left to clean from here
    notes = [f"LiteRT benchmark_model {binary.name} ({info.abi}), {warmup_runs} warm-up + {num_runs} runs per delegate"]
    if extra_inputs:
        notes.append("inputs: all-ones attention mask, token ids in [1000, 2000]")
    return DeviceBenchmark(artifact=artifact.name, device=info, benchmark_model=str(binary), results=results, notes=notes)
