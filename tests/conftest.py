"""Shared fixtures: tiny seeded models saved as real Hugging Face directories, and sample texts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit  # noqa: F401  (sets the offline / no-TensorFlow environment before transformers loads)
from edgekit.tiny_models import build_tiny_model_dir
from edgekit.verify.texts import load_texts

#: (id, kind, task) of the tiny models every converter is tested on.
TINY_MODELS = [
    ("bert-embedding", "bert", "embedding"),
    ("distilbert-embedding", "distilbert", "embedding"),
    ("bert-classification", "bert", "classification"),
]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: build_tiny_model_dir(root / name, kind, task, seed=0) for name, kind, task in TINY_MODELS}


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return load_texts()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real `edgekit` console entry point in a subprocess, as a user would."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
