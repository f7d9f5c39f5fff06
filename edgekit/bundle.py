"""Atomic bundle writing and the manifest.

A bundle is built inside a temporary directory next to its target and renamed into
place only when everything succeeded, so a failed or interrupted export never leaves a
half-written bundle; an existing bundle is replaced only when the caller says `force`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgekit.errors import UserError


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse early (before any work) when the target exists and `force` is not set."""
    if out_dir.exists() and not force:
        raise UserError(f"output directory {out_dir} already exists; pass --force to replace it or choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} is a file; choose a directory path with --out")


@contextmanager
def staged_bundle(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success move it to `out_dir`, on failure delete it."""
    check_target(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            if not force:  # appeared while we worked
                raise UserError(f"output directory {out_dir} appeared during the export; pass --force to replace it")
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(trash / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_inventory(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> list[dict[str, Any]]:
    """Every file under `root` (relative path, bytes, sha256), sorted by path."""
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        rows.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return rows


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def runtime_versions() -> dict[str, str]:
    """Versions of every library that shaped or ran an artifact (for the manifest and report)."""
    from importlib import metadata

    names = [
        "edgekit-ml",
        "torch",
        "transformers",
        "onnx",
        "onnxruntime",
        "litert-torch",
        "ai-edge-litert",
        "tensorflow-cpu",
        "coremltools",
        "numpy",
    ]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_bundle(bundle_dir: str | Path) -> tuple[dict[str, Any], list]:
    """Read a bundle written by `edgekit export`: its report.json and its artifacts as `Artifact`s."""
    from converters.base import Artifact, TensorSpec

    root = Path(bundle_dir)
    report_file = root / "report.json"
    if not root.is_dir() or not report_file.is_file():
        raise UserError(f"{root} is not an edgekit bundle (no report.json); pass a directory written by 'edgekit export'")
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{report_file} is not valid JSON; re-run 'edgekit export' to rewrite the bundle") from exc

    def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
        return [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items]

    artifacts = []
    for row in report.get("artifacts", []):
        path = root / row["path"]
        if not path.exists():
            raise UserError(f"bundle {root} lists {row['path']} but the file is missing; re-run 'edgekit export'")
        artifacts.append(
            Artifact(row["format"], row["precision"], path, specs(row["inputs"]), specs(row["outputs"]), ops=row.get("ops", {}))
        )
    return report, artifacts
