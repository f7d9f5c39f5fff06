"""The aarch64 emulation environment behind `edgekit verify --arch arm64`, and `edgekit setup-arm`.

Why this route: it needs no chroot, no binfmt and no root. Everything comes from the package
registries with their own clients, into one cache directory (default `~/.cache/edgekit/arm64`,
or `$EDGEKIT_ARM_HOME`):

- `bin/qemu-aarch64`: QEMU 10 user-mode emulator (static), taken out of Debian bookworm-backports'
  `qemu-user` .deb. QEMU 10 matters: 7.2 (bookworm) shows the guest the host's x86 `/proc/cpuinfo`,
  so XNNPACK is silently not applied or the interpreter crashes, and its `max` CPU computes wrong
  int8 results (see shared/notes/arm-emulation.md);
- `rootfs/`: Debian bookworm's arm64 `python3.11` and the libraries it needs (`libstdc++6` for the
  runtimes), resolved by `apt-get` in a private apt state (`APT::Architecture=arm64`, the host's
  Debian mirror) and unpacked with `dpkg-deb -x`; the host's dpkg database is never touched;
- `site/`: the aarch64 wheels of onnxruntime and ai-edge-litert at the host's versions, plus numpy,
  installed with `pip install --target --platform manylinux…aarch64` from `wheels/`.

The guest is run as `QEMU_CPU=<model> qemu-aarch64 -L rootfs rootfs/usr/bin/python3.11 -s -E …`.
Each step leaves a stamp, so `setup-arm` is idempotent and resumes where it stopped (apt and pip
keep their partial downloads in the cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UserError

#: CPU models of QEMU 10's aarch64 user-mode emulator that are real cores (not `max`, whose SME paths were wrong in 7.2).
QEMU_CPUS = (
    "cortex-a35",
    "cortex-a53",
    "cortex-a55",
    "cortex-a57",
    "cortex-a72",
    "cortex-a76",
    "cortex-a710",
    "neoverse-n1",
    "neoverse-n2",
    "neoverse-v1",
    "a64fx",
)
SUITE = "bookworm"  # its python3.11 matches the cp311 wheels and the host interpreter
GUEST_PACKAGES = ("python3.11", "libstdc++6", "libgcc-s1")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIN_FREE_BYTES = 1_500_000_000
WHEEL_PLATFORMS = ("manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "any")
STEPS = ("check", "qemu", "rootfs", "wheels", "smoke test")

Say = Callable[[str], None]


def arm_home() -> Path:
    """Where the environment lives: $EDGEKIT_ARM_HOME, else ~/.cache/edgekit/arm64."""
    env = os.environ.get("EDGEKIT_ARM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgekit" / "arm64"


def host_versions() -> dict[str, str]:
    """The guest gets the host's runtime versions, so ARM-vs-x86 differences are the architecture's, not a release's."""
    from importlib import metadata

    versions = {}
    for name in ("onnxruntime", "ai-edge-litert", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class ArmEnv:
    """A prepared environment: where the emulator, the guest Python and the guest packages are."""

    home: Path

    @property
    def qemu(self) -> Path:
        return self.home / "bin" / "qemu-aarch64"

    @property
    def rootfs(self) -> Path:
        return self.home / "rootfs"

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / "python3.11"

    @property
    def site(self) -> Path:
        return self.home / "site"

    @property
    def info_file(self) -> Path:
        return self.home / "env.json"

    def info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def missing(self) -> str | None:
        """One line naming what is not prepared, or None when the environment is ready."""
        for path, what in ((self.qemu, "the QEMU emulator"), (self.python, "the arm64 Python"), (self.site, "the aarch64 runtimes")):
            if not path.exists():
                return f"{what} is missing ({path})"
        info = self.info()
        if not info.get("ready"):
            return f"the environment in {self.home} was not finished"
        want = host_versions()
        have = info.get("versions", {})
        stale = [f"{k} {have.get(k)} != host {v}" for k, v in want.items() if k != "numpy" and have.get(k) != v]
        if stale:
            return "the guest runtimes differ from the host's (" + ", ".join(stale) + ")"
        return None

    def guest_command(self, script: Path | str, *args: str) -> list[str]:
        return [str(self.qemu), "-L", str(self.rootfs), str(self.python), "-s", "-E", str(script), *args]

    def guest_env(self, cpu: str) -> dict[str, str]:
        """A clean environment: nothing of the host's Python setup (PYTHONPATH, pip settings) leaks into the guest."""
        return {"QEMU_CPU": cpu, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home), "OMP_NUM_THREADS": "1"}


def require_env() -> ArmEnv:
    """The prepared environment, or a one-line UserError saying what is missing and to run `edgekit setup-arm`."""
    env = ArmEnv(arm_home())
    missing = env.missing()
    if missing:
        raise UserError(f"the arm64 emulation environment is not prepared: {missing}; run 'edgekit setup-arm' (about 1-2 minutes, ~450 MB)")
    return env


def check_cpus(cpus: list[str]) -> list[str]:
    """Validate QEMU CPU model names before any work."""
    if not cpus:
        raise UserError(f"no CPU model given; pass --cpu with one or more of {', '.join(QEMU_CPUS)}")
    for cpu in cpus:
        if cpu not in QEMU_CPUS:
            hint = " ('max' is refused: QEMU's max CPU is not a real core and has computed wrong int8 results)" if cpu == "max" else ""
            raise UserError(f"unknown CPU model '{cpu}'{hint}; use one or more of {', '.join(QEMU_CPUS)}")
    return list(dict.fromkeys(cpus))


def cpus_for_profile(profile) -> list[str]:
    """The QEMU models of the device's CPU clusters (e.g. 'Kryo 485 Gold (Cortex-A76)' -> cortex-a76); else a little+big pair."""
    found = []
    for cluster in getattr(profile, "cpu_clusters", []):
        for match in re.findall(r"(cortex-a\d+|neoverse-[nv]\d)", str(cluster.microarchitecture).lower()):
            if match in QEMU_CPUS:
                found.append(match)
    return list(dict.fromkeys(found)) or ["cortex-a55", "cortex-a76"]


# --------------------------------------------------------------------------------------------
# setup


class SetupError(UserError):
    """The environment cannot be prepared; the message is one line naming what is missing."""


def _run(cmd: list[str], say: Say, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a setup command, streaming its last line to the progress display; a failure becomes one line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            say(f"{what}: {line[:110]}")
    if proc.wait() != 0:
        tail = next((ln for ln in reversed(lines) if re.search(r"^(E:|ERROR|error)", ln)), lines[-1] if lines else "no output")
        raise SetupError(
            f"{what} failed ({tail.strip()[:200]}); check the network and the Debian mirror / PyPI, then re-run 'edgekit setup-arm'"
        )
    return "\n".join(lines)


def host_mirror() -> str:
    """The Debian mirror the host's apt sources already name (deb822 or one-line style), else deb.debian.org."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for uri in re.findall(r"(?:URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, flags=re.M):
            uri = uri.rstrip("/")
            if re.search(r"/debian$", uri) and "security" not in uri:
                return uri
    return DEFAULT_MIRROR


class _PrivateApt:
    """apt-get with its own state, cache and sources under the arm64 home: the host's apt and dpkg stay untouched."""

    def __init__(self, root: Path, arch: str, suites: list[str], mirror: str) -> None:
        self.root = root
        for sub in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state" / "status").touch()
        signed = f"[signed-by={KEYRING}] " if Path(KEYRING).is_file() else "[trusted=yes] "
        (root / "sources.list").write_text("".join(f"deb {signed}{mirror} {s} main\n" for s in suites), encoding="utf-8")
        self.options = [
            f"-oDir::State={root / 'state'}",
            f"-oDir::State::status={root / 'state' / 'status'}",
            f"-oDir::Cache={root / 'cache'}",
            f"-oDir::Etc::SourceList={root / 'sources.list'}",
            "-oDir::Etc::SourceParts=/nonexistent",
            f"-oDir::Etc::Parts={root / 'etc' / 'apt.conf.d'}",
            f"-oDir::Etc::PreferencesParts={root / 'etc' / 'preferences.d'}",
            f"-oAPT::Architecture={arch}",
            f"-oAPT::Architectures::={arch}",
            "-oDebug::NoLocking=1",
            "-oAPT::Sandbox::User=root" if os.geteuid() == 0 else "-oAPT::Sandbox::User=" + os.environ.get("USER", "nobody"),
            "-oAcquire::Retries=3",
        ]

    def get(self, *args: str, say: Say, what: str) -> str:
        return _run(["apt-get", *self.options, "-q", *args], say, what, cwd=self.root)

    @property
    def archives(self) -> Path:
        return self.root / "cache" / "archives"


def _extract_deb(deb: Path, target: Path, members: list[str] | None = None) -> None:
    """`dpkg-deb -x` (or only `members`), without running any maintainer script."""
    if members is None:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, capture_output=True)
        return
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target), *members], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()


def _preflight(home: Path) -> None:
    for tool, why in (("apt-get", "to resolve Debian packages"), ("dpkg-deb", "to unpack them"), ("tar", "to unpack them")):
        if shutil.which(tool) is None:
            raise SetupError(f"'{tool}' not found ({why}): setup-arm needs a Debian or Ubuntu host with apt; install {tool} and re-run")
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"cannot write to {home} ({exc.strerror}); set EDGEKIT_ARM_HOME to a writable directory") from exc
    free = shutil.disk_usage(home).free
    if free < MIN_FREE_BYTES:
        raise SetupError(
            f"not enough disk in {home}: {free / 1e9:.1f} GB free, {MIN_FREE_BYTES / 1e9:.1f} GB needed; free space or set EDGEKIT_ARM_HOME"
        )


def _stamp(home: Path, step: str) -> Path:
    return home / f".done-{step.replace(' ', '-')}"


def _setup_qemu(env: ArmEnv, mirror: str, say: Say) -> str:
    apt = _PrivateApt(env.home / "apt-host", "amd64", [f"{SUITE}-backports"], mirror)
    apt.get("update", say=say, what="apt update (bookworm-backports)")
    apt.get("install", "--download-only", "-y", "--no-install-recommends", "qemu-user", say=say, what="download qemu-user")
    debs = sorted(apt.archives.glob("qemu-user_*.deb"))
    if not debs:
        raise SetupError("apt did not download qemu-user from bookworm-backports; check that the mirror serves bookworm-backports")
    with tempfile.TemporaryDirectory(dir=env.home) as tmp:
        _extract_deb(debs[-1], Path(tmp), ["./usr/bin/qemu-aarch64"])
        env.qemu.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / "usr" / "bin" / "qemu-aarch64", env.qemu)
    version = subprocess.run([str(env.qemu), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    major = int(re.search(r"version (\d+)", version).group(1)) if re.search(r"version (\d+)", version) else 0
    if major < 8:
        raise SetupError(f"{version} is too old (QEMU < 8 shows the guest the host's /proc/cpuinfo); the mirror must serve QEMU >= 8")
    return version


def _setup_rootfs(env: ArmEnv, mirror: str, say: Say) -> str:
    apt = _PrivateApt(env.home / "apt-arm64", "arm64", [SUITE], mirror)
    apt.get("update", say=say, what="apt update (arm64)")
    apt.get("install", "--download-only", "-y", "--no-install-recommends", *GUEST_PACKAGES, say=say, what="download arm64 packages")
    debs = sorted(apt.archives.glob("*.deb"))
    staging = Path(tempfile.mkdtemp(prefix="rootfs.partial-", dir=env.home))
    try:
        for i, deb in enumerate(debs, 1):
            say(f"unpack {deb.name.split('_')[0]} ({i}/{len(debs)})")
            _extract_deb(deb, staging)
        if env.rootfs.exists():
            shutil.rmtree(env.rootfs)
        staging.rename(env.rootfs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return f"{len(debs)} packages"


def _setup_wheels(env: ArmEnv, say: Say) -> dict[str, str]:
    import sys

    versions = host_versions()
    pins = [f"{k}=={v}" for k, v in versions.items()]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    target = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platforms]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # host pip settings must not leak in
    wheels = env.home / "wheels"
    pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    _run([*pip, "download", "-d", str(wheels), *target, *pins], say, "pip download (aarch64 wheels)", env=clean)
    staging = Path(tempfile.mkdtemp(prefix="site.partial-", dir=env.home))
    try:
        _run(
            [*pip, "install", "--no-index", "--find-links", str(wheels), "--target", str(staging), "--no-warn-conflicts", *target, *pins],
            say,
            "pip install --target (aarch64)",
            env=clean,
        )
        if env.site.exists():
            shutil.rmtree(env.site)
        staging.rename(env.site)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return versions


SMOKE = (
    "import json, platform, sys; sys.path.insert(0, sys.argv[1]); import numpy, onnxruntime, ai_edge_litert.interpreter; "
    "cpu = open('/proc/cpuinfo').read(); "
    "print(json.dumps({'machine': platform.machine(), 'x86': 'vendor_id' in cpu, 'ort': onnxruntime.__version__}))"
)


def _smoke(env: ArmEnv, say: Say) -> dict:
    say("import numpy, onnxruntime and ai_edge_litert in the emulated Python (cortex-a76)")
    proc = subprocess.run(
        [str(env.qemu), "-L", str(env.rootfs), str(env.python), "-s", "-E", "-c", SMOKE, str(env.site)],
        capture_output=True,
        text=True,
        env=env.guest_env("cortex-a76"),
        timeout=300,
    )
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        raise SetupError(
            f"the emulated Python cannot import the runtimes ({(proc.stderr.strip().splitlines() or ['no output'])[-1][:200]})"
        ) from None
    if data["machine"] != "aarch64" or data["x86"]:
        raise SetupError("the guest does not see an aarch64 CPU (QEMU shows the host's /proc/cpuinfo); it needs QEMU >= 8")
    return data


def setup(
    home: Path | None = None, *, force: bool = False, say: Say | None = None, step: Callable[[str, str], None] | None = None
) -> ArmEnv:
    """Prepare the environment (idempotent: finished steps are skipped unless `force`). `step(name, state)` reports progress."""
    say = say or (lambda _m: None)
    step = step or (lambda _n, _s: None)
    env = ArmEnv(home or arm_home())
    step("check", "running")
    _preflight(env.home)
    if force:
        for s in STEPS:
            _stamp(env.home, s).unlink(missing_ok=True)
    info = env.info() if not force else {}
    info["ready"] = False
    want = host_versions()
    if info.get("versions") and {k: v for k, v in info["versions"].items() if k != "numpy"} != {
        k: v for k, v in want.items() if k != "numpy"
    }:
        _stamp(env.home, "wheels").unlink(missing_ok=True)  # the host's runtimes changed: fetch the matching aarch64 builds
    step("check", "done")
    mirror = host_mirror()
    info["mirror"] = mirror
    for name, fn in (
        ("qemu", lambda: _setup_qemu(env, mirror, say)),
        ("rootfs", lambda: _setup_rootfs(env, mirror, say)),
        ("wheels", lambda: _setup_wheels(env, say)),
    ):
        stamp = _stamp(env.home, name)
        key = {"qemu": "qemu", "rootfs": "rootfs", "wheels": "versions"}[name]
        if (
            stamp.exists()
            and (name != "qemu" or env.qemu.exists())
            and (name != "rootfs" or env.python.exists())
            and (name != "wheels" or env.site.exists())
        ):
            try:  # what the step found when it ran (its stamp keeps it)
                info[key] = json.loads(stamp.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                pass
            step(name, "cached")
            continue
        step(name, "running")
        info[key] = fn()
        stamp.write_text(json.dumps(info[key]) + "\n", encoding="utf-8")
        step(name, "done")
    step("smoke test", "running")
    info["smoke"] = _smoke(env, say)
    info["ready"] = True
    info["size_mb"] = round(sum(p.stat().st_size for p in env.home.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6)
    tmp = env.info_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, env.info_file)
    step("smoke test", "done")
    return env
