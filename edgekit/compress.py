"""`edgekit compress`: run a recipe's passes on the teacher and save the student as a Hugging Face directory.

The saved directory is what `load_teacher` reads (config + safetensors + tokenizer + the
sentence-transformers pooling files), so `edgekit export --model DIR` exports the student like any model
and every later verb needs nothing new. Everything is checked before training starts (recipe, corpus,
target directory, that the student can be saved), and the directory is written atomically, after a
round-trip check that the reloaded student gives the same outputs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.bundle import check_target, staged_bundle, write_json
from edgekit.errors import UserError
from edgekit.model import Teacher, load_teacher, parameter_counts
from edgekit.passes import PassContext, check_recipe_order, get_pass
from edgekit.passes._saliency import find_encoder
from edgekit.recipe import parse_recipe

#: a reloaded student must reproduce the in-memory one this closely on the check texts
ROUND_TRIP_TOL = 1e-4


@dataclass
class CompressResult:
    out_dir: Path
    records: list[dict[str, Any]]
    parameters: dict[str, int]


def _check_savable(steps) -> None:
    for step, pass_ in steps:
        if step.name == "distill" and getattr(pass_.config, "student", "layers") != "layers":
            raise UserError(
                f"compress saves Hugging Face models; student={pass_.config.student} is not one — export it directly: "
                f"edgekit export --recipe {step.name}:student={pass_.config.student} --corpus ..."
            )


def save_student(student: torch.nn.Module, teacher: Teacher, out: Path) -> None:
    """Write `student` as an HF directory with the teacher's tokenizer and pooling head."""
    try:
        enc = find_encoder(student)
    except UserError as exc:
        raise UserError(f"compress: the student is not a Hugging Face encoder, so it cannot be saved as one ({exc})") from exc
    enc.hf.save_pretrained(out, safe_serialization=True)
    teacher.tokenizer.save_pretrained(out)
    if teacher.task == "embedding" and teacher.pooling is not None:
        pooling_dir = out / "1_Pooling"
        pooling_dir.mkdir(exist_ok=True)
        mode = teacher.pooling.mode
        (pooling_dir / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": int(enc.config.hidden_size if enc.family == "bert" else enc.config.dim),
                    "pooling_mode_cls_token": mode == "cls",
                    "pooling_mode_mean_tokens": mode == "mean",
                    "pooling_mode_max_tokens": mode == "max",
                },
                indent=2,
            )
        )
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if teacher.pooling.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "modules.json").write_text(json.dumps(modules, indent=2))


def _round_trip(student: torch.nn.Module, saved: Path, teacher: Teacher, texts: list[str]) -> float:
    reloaded = load_teacher(saved)
    inputs = teacher.tokenize(texts, 64)
    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        want = student.eval()(**feed).float().numpy()
    got = reloaded.run(inputs)
    return float(np.abs(want - got).max())


def compress(
    model: str | Path | None = None,
    *,
    recipe: str,
    corpus: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    checkpoint_dir: str | Path | None = None,
    allow_pickle: bool = False,
    seq_len: int = 128,
) -> CompressResult:
    """Apply `recipe`'s passes to the teacher and save the student to `out` (default out/student)."""
    parsed = parse_recipe(recipe)
    if not parsed.passes:
        raise UserError(f"recipe '{recipe}' has no pass to run; e.g. --recipe distill:layers=3")
    if parsed.precisions:
        raise UserError(
            f"compress saves a PyTorch model; precision steps ({', '.join(parsed.precisions)}) are applied by the converters: "
            "drop them here and pass them to edgekit export"
        )
    passes = [(step, get_pass(step.name, step.options)) for step in parsed.passes]
    check_recipe_order([(step.name, p) for step, p in passes])
    _check_savable(passes)
    out_dir = Path(out) if out is not None else Path("out") / "student"
    check_target(out_dir, force)
    from edgekit.distill.data import load_corpus

    texts = load_corpus(corpus)  # a missing or empty corpus fails here, before the teacher loads
    teacher = load_teacher(model, allow_pickle=allow_pickle)
    ctx = PassContext(teacher=teacher, texts=texts, profile=None, seq_len=seq_len, corpus=corpus, checkpoint_dir=checkpoint_dir)
    student = copy.deepcopy(teacher.module)
    for _step, pass_ in passes:
        student = pass_.apply(student, ctx)
    student.eval()
    from edgekit.distill import ddp

    if not ddp.is_main():  # under torchrun every rank trains; rank 0 alone writes the student
        return CompressResult(out_dir=out_dir, records=ctx.records, parameters=parameter_counts(student))
    with staged_bundle(out_dir, force) as staging:
        save_student(student, teacher, staging)
        err = _round_trip(student, staging, teacher, texts[:16])
        if err > ROUND_TRIP_TOL:
            raise UserError(
                f"compress: the saved student does not reload to the same model (max difference {err:.2g}); "
                "the recipe changes the structure beyond what a Hugging Face config describes; use edgekit export --recipe instead"
            )
        write_json(
            staging / "edgekit_compress.json",
            {"recipe": parsed.to_json(), "teacher": teacher.name, "teacher_hash": teacher.source_hash, "passes": ctx.records},
        )
    return CompressResult(out_dir=out_dir, records=ctx.records, parameters=parameter_counts(student))
