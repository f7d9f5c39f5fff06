"""Tiny seeded random encoders saved as real Hugging Face directories.

Tests, benchmarks and examples build them from a config (no download): the same
tokenizer files as the embedded teacher, so tokenisation is realistic, with a small
encoder behind it so every converter runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch

from edgekit.model import default_teacher_dir

TinyKind = Literal["bert", "distilbert"]
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_tiny_model_dir(
    out_dir: str | Path,
    kind: TinyKind = "bert",
    task: Literal["embedding", "classification"] = "embedding",
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    num_labels: int = 3,
    pickle_only: bool = False,
) -> Path:
    """Write a seeded random `kind` model (+ the teacher's tokenizer) to `out_dir` and return it."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertModel,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = {"vocab_size": 30522, "max_position_embeddings": 512}
    if kind == "bert":
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden * 4, **common)
        model_cls = BertForSequenceClassification if task == "classification" else BertModel
    elif kind == "distilbert":
        config = DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=hidden * 4, **common)
        model_cls = DistilBertForSequenceClassification if task == "classification" else DistilBertModel
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    if task == "classification":
        config.num_labels = num_labels
        config.id2label = {i: f"label_{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    model = model_cls(config).eval()
    model.save_pretrained(out, safe_serialization=not pickle_only)
    if task == "embedding":  # the same sentence-transformers head as the teacher: mean pooling + L2 normalise
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
    src = default_teacher_dir()
    for name in _TOKENIZER_FILES:
        shutil.copy2(src / name, out / name)
    return out
