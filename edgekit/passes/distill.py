"""`distill`: train a smaller student to reproduce the teacher, on a laptop-class CPU.

Students (`student=`): `layers` (default) keeps `layers` teacher layers chosen by `init` (skip: every
n/k-th ending with the last, as PKD-skip/DistilBERT; first; last) or an explicit `mapping`, initialised from
those layers; `cnn` / `bilstm` are small model-agnostic encoders over the teacher's tokenizer (see
`edgekit/distill/students.py`).

Losses (weights; 0 turns one off): `output_weight` (embeddings: 1 - cosine or MSE; logits: KL at
`temperature`), `hidden_weight` (PKD/TinyBERT token-state MSE, student layer i vs teacher layer mapping[i]),
`attention_weight` and `value_weight` (MiniLM attention distributions and value relations). Hidden and
attention losses need a `layers` student; the small students learn from the output only.

Data: `corpus` (a .txt file, one text per line, or a directory of them; default the shipped samples, or
the CLI's --corpus). A seeded `heldout` fraction is never trained on; fidelity before/after is measured on
it, and training texts equal to a held-out one up to case and punctuation are dropped. `extra` adds
training-only texts: by default (`auto`) the shipped samples/corpus when the corpus is the shipped samples,
because a few hundred texts are too few to generalise from. `augment=dropout,mask,mix,swap` adds
`augment_copies` variants of each corpus text per epoch (extra texts are used as they are), labelled by the
teacher. Without `epochs`, training runs about EXAMPLES_PER_RUN examples; epochs after the first read the
teacher's targets from a cache (`edgekit/distill/teacher_cache.py`).

Checkpoints: one per epoch under `checkpoint_dir` (default ~/.cache/edgekit/distill/<hash of config,
teacher, corpus and start model>); Ctrl-C saves one and the same command resumes from it; a finished run is
reused, not retrained.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from edgekit.distill.data import (
    AUGMENTATIONS,
    is_shipped_samples,
    load_corpus,
    sample_of,
    shipped_corpus,
    split_heldout,
    without_heldout,
)
from edgekit.distill.students import BiLSTMStudent, ConvStudent, layer_student, pca_embeddings, resolve_mapping
from edgekit.distill.trainer import Plan, StepHook, Trainer, default_cache_root, run_key
from edgekit.errors import UserError
from edgekit.passes._saliency import count_params, find_encoder
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass

#: default training length in examples (texts + augmented variants): three passes over the shipped samples' training
#: side (x4 with augmentation) plus 16k shipped-corpus texts, ~13 minutes for the 3-layer MiniLM student on 2 threads here
EXAMPLES_PER_RUN = 50_000

#: default learning rate per student kind: a teacher-initialised student needs gentler steps than small students.
#: layers: on the shipped corpus (2 epochs, 9.6k texts) 5e-4 reached held-out cosine 0.9166, 2e-4 0.9104, 1e-3 0.9127
DEFAULT_LR = {"layers": 5e-4, "cnn": 2e-3, "bilstm": 2e-3}


class DistillConfig(PassConfig):
    student: Literal["layers", "cnn", "bilstm"] = "layers"
    layers: int | None = Field(None, ge=1, description="student depth (layers student; cnn: conv blocks)")
    mapping: list[int] | None = Field(None, description="teacher layer each student layer starts from and is supervised by, e.g. 1,3,5")
    #: output: the layers whose removal changes the output least on training texts (greedy, as prune-layers:keep=K)
    init: Literal["output", "skip", "first", "last"] = "output"
    width: int = Field(256, ge=8, description="cnn/bilstm embedding width")
    kernel: int = Field(5, ge=1, description="cnn kernel size (odd)")
    output_weight: float = Field(1.0, ge=0)
    output_loss: Literal["cosine", "mse"] = "cosine"
    temperature: float = Field(2.0, gt=0)
    hidden_weight: float = Field(1.0, ge=0)
    attention_weight: float = Field(0.0, ge=0)
    value_weight: float = Field(0.0, ge=0)
    epochs: int | None = Field(
        None, ge=1, description=f"passes over the training texts (default: about {EXAMPLES_PER_RUN} examples, at most 10 epochs)"
    )
    lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    #: small batches: with a few hundred texts the number of updates, not the batch, limits how far the student gets
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    corpus: str | None = None
    extra: str = Field(
        "auto",
        description="training-only texts (never held out): 'auto' (the shipped general corpus samples/corpus when the corpus is the "
        "shipped samples, else none), 'shipped' (always), 'stdlib' (the Python stdlib's docstring sentences), 'none', or a .txt file/dir",
    )
    #: 16k: three cached epochs over 16k texts (804-852 s, held-out 0.927-0.930) score about as one epoch over all 48k
    #: (0.928), which takes 945 s and would push the 15-minute default run over its budget
    extra_limit: int = Field(16000, ge=1, description="at most this many extra texts (a seeded sample across all of them)")
    heldout: float = Field(0.2, gt=0, lt=1, description="fraction of the corpus held out (never trained on) for fidelity")
    #: swap+mix measured best on all-MiniLM-L6-v2 (held-out cosine 0.865 vs 0.851 without, same steps; see bench/distill.py)
    augment: list[str] = Field(default_factory=lambda: ["swap", "mix"], description="dropout, mask, mix, swap (empty: none)")
    augment_copies: int = Field(3, ge=0, description="augmented variants per training text per epoch")
    max_len: int | None = Field(None, ge=2, description="token limit while training (default: the profile's seq_len)")
    qat: bool = Field(False, description="quantization-aware: train through int8 fake quantization of the layer Linears (STE)")
    dropout: bool = Field(False, description="train the student with its dropout on (off: it learns the teacher's deterministic function)")
    train_embeddings: bool = Field(
        False, description="layers student: also train the embedding tables (off: unseen tokens keep the teacher's)"
    )
    #: every core by default: training is GEMM-bound, and 2 threads trained 1.67x faster than 1 on this idle 2-core host.
    #: Set threads=1 when something else keeps a core busy (2 threads then oversubscribe and can run many times slower)
    threads: int | None = Field(None, ge=1, description="torch threads while training (default: every usable core)")
    checkpoint_dir: str | None = None
    resume: bool = True

    @field_validator("mapping", "augment", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None or isinstance(v, list):
            return v
        if isinstance(v, str) and "," in v:
            return [x.strip() for x in v.split(",") if x.strip()]
        return [v]

    @field_validator("augment")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in AUGMENTATIONS]
        if bad:
            raise ValueError(f"'{bad[0]}' is not an augmentation; use {', '.join(AUGMENTATIONS)}")
        return v


def _texts_hash(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


@register_pass
class Distill(Pass):
    """Knowledge distillation into a smaller student (see the module docstring)."""

    name = "distill"
    Config = DistillConfig
    primary_option: ClassVar[str] = "layers"

    def __init__(self, config: DistillConfig) -> None:
        super().__init__(config)
        if config.student != "layers" and config.mapping is not None:
            raise UserError(f"distill: mapping is for the layers student; student={config.student} learns from the output only")
        if config.qat and config.student != "layers":
            raise UserError(f"distill: qat fake-quantizes transformer Linears; student={config.student} has none, drop qat")
        if config.student == "cnn" and config.kernel % 2 == 0:
            raise UserError(f"distill: kernel={config.kernel} must be odd so the convolution keeps every token aligned")
        #: test hook called after each optimizer step with (epoch, step)
        self.on_step: StepHook | None = None
        self.console = None
        self._train_texts: list[str] | None = None

    #: passes that change the layer stack: the layers student maps its layers onto the teacher's, so they must come later
    LAYER_CHANGING: ClassVar[tuple[str, ...]] = ("prune-layers", "distill")

    def check_order(self, before: list[str], after: list[str]) -> None:
        cfg: DistillConfig = self.config
        if cfg.student == "layers":
            clash = [n for n in before if n in self.LAYER_CHANGING]
            if clash:
                raise UserError(
                    f"distill after {clash[0]}: the student's layers are mapped onto the teacher's, so distill must come "
                    f"before {clash[0]} in the recipe, e.g. distill:layers=3+{clash[0]}"
                )
        elif after:
            raise UserError(
                f"{after[0]} cannot follow distill:student={cfg.student}: that student is not a transformer; "
                "put transformer passes before distill or use the layers student"
            )

    def extra_texts(self, corpus_src: str | Path | None) -> tuple[list[str], str | None]:
        """Training-only texts from `extra` and where they came from (None: no extra texts)."""
        cfg: DistillConfig = self.config
        if cfg.extra == "none" or (cfg.extra == "auto" and not is_shipped_samples(corpus_src)):
            return [], None
        if cfg.extra in ("auto", "shipped"):
            return sample_of(shipped_corpus(), cfg.extra_limit, cfg.seed), "samples/corpus"
        if cfg.extra == "stdlib":
            from edgekit.distill.offline_text import stdlib_sentences

            return stdlib_sentences(cfg.extra_limit, seed=cfg.seed), "stdlib docstrings"
        return sample_of(load_corpus(cfg.extra), cfg.extra_limit, cfg.seed), cfg.extra

    def default_epochs(self, n_train: int, n_extra: int = 0) -> int:
        """Epochs for about EXAMPLES_PER_RUN examples: a few hundred texts get 10 epochs, 16k three, more fewer.

        An epoch is every corpus text with its augmented copies plus every extra text once."""
        cfg: DistillConfig = self.config
        per_epoch = n_train * (1 + (cfg.augment_copies if cfg.augment else 0)) + n_extra
        return max(1, min(10, round(EXAMPLES_PER_RUN / max(1, per_epoch))))

    def output_mapping(self, model: torch.nn.Module, ctx: PassContext, k: int, n_teacher: int) -> list[int]:
        """Keep the `k` teacher layers whose joint removal moves the output least on training texts (greedy)."""
        from types import SimpleNamespace

        from edgekit.passes._saliency import calibration
        from edgekit.passes.prune import _greedy_drop

        resolve_mapping(n_teacher, k, None, "skip")  # range check
        if k == n_teacher:
            return list(range(n_teacher))
        texts = self._train_texts or []
        calib = calibration(model, SimpleNamespace(teacher=ctx.teacher, texts=texts, seq_len=ctx.seq_len), 128, self.name)
        dropped, _ = _greedy_drop(find_encoder(model), model, calib, n_teacher - k)
        return [i for i in range(n_teacher) if i not in set(dropped)]

    def build_student(self, model: torch.nn.Module, ctx: PassContext) -> tuple[torch.nn.Module, list[int], list[str]]:
        """The untrained student, the teacher layers supervising its layers, and notes."""
        cfg: DistillConfig = self.config
        teacher = ctx.teacher.module
        n_teacher = len(find_encoder(teacher))
        notes: list[str] = []
        if cfg.student == "layers":
            n_model = len(find_encoder(model))
            if n_model != n_teacher:
                raise UserError(
                    f"distill: the model reaching distill has {n_model} layers but the teacher has {n_teacher}; "
                    "put distill first in the recipe (before layer-changing passes)"
                )
            if cfg.mapping is None and cfg.init == "output":
                mapping = self.output_mapping(model, ctx, cfg.layers or 3, n_teacher)
            else:
                mapping = resolve_mapping(n_teacher, cfg.layers, cfg.mapping, cfg.init)
            student = layer_student(model, mapping)
            if not cfg.train_embeddings:
                for p in find_encoder(student).base.embeddings.parameters():
                    p.requires_grad_(False)
            return student, mapping, notes
        probe = ctx.teacher.tokenize(["probe"], 8)
        with torch.no_grad():
            out_dim = int(teacher(**{k: torch.from_numpy(v) for k, v in probe.items()}).shape[-1])
        normalize = bool(ctx.teacher.pooling.normalize) if ctx.teacher.pooling is not None else False
        emb = pca_embeddings(teacher, cfg.width)
        if cfg.student == "cnn":
            student = ConvStudent(emb, cfg.layers or 4, cfg.kernel, out_dim, normalize)
        else:
            student = BiLSTMStudent(emb, cfg.width, out_dim, normalize)
        if cfg.hidden_weight or cfg.attention_weight or cfg.value_weight:
            notes.append(f"student={cfg.student}: hidden/attention losses need a layers student; trained on the output loss only")
        return student, [], notes

    def apply(self, model: torch.nn.Module, ctx: PassContext) -> torch.nn.Module:
        cfg: DistillConfig = self.config
        if ctx is None or ctx.teacher is None:
            raise UserError("distill needs the teacher in the pass context")
        teacher = ctx.teacher
        corpus_src = cfg.corpus or getattr(ctx, "corpus", None)
        texts = load_corpus(corpus_src)
        train, heldout = split_heldout(texts, cfg.heldout, cfg.seed)
        extra, extra_src = self.extra_texts(corpus_src)
        seen = set(train)
        extra = without_heldout([t for t in extra if t not in seen], heldout)
        kept = without_heldout(train, heldout)
        dropped_as_heldout = len(train) - len(kept)
        train = kept
        epochs = cfg.epochs or self.default_epochs(len(train), len(extra))
        before_params = count_params(model)
        self._train_texts = train + extra
        student, mapping, notes = self.build_student(model, ctx)
        heads = find_encoder(teacher.module).num_heads(0) if mapping else 1
        max_len = cfg.max_len or int(getattr(ctx, "seq_len", 0) or 128)
        key_parts = {
            "config": cfg.model_dump(mode="json", exclude={"checkpoint_dir", "resume", "threads"}),
            "teacher": teacher.source_hash,
            "corpus": _texts_hash(texts),
            "extra": _texts_hash(extra),
            "max_len": max_len,
            "start_model": hashlib.sha256(str(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())).encode()).hexdigest(),
        }
        key = run_key(key_parts)
        ckpt_dir = Path(cfg.checkpoint_dir or getattr(ctx, "checkpoint_dir", None) or default_cache_root() / key[:16]).expanduser()
        plan = Plan(
            student=student,
            teacher=teacher.module,
            tokenizer=teacher.tokenizer,
            task=teacher.task,
            train=train,
            extra=extra,
            heldout=heldout,
            max_len=max_len,
            with_token_types="token_type_ids" in teacher.input_names,
            epochs=epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr or DEFAULT_LR[cfg.student],
            weight_decay=cfg.weight_decay,
            warmup=cfg.warmup,
            seed=cfg.seed,
            augment=list(cfg.augment),
            augment_copies=cfg.augment_copies,
            output_weight=cfg.output_weight,
            output_kind=cfg.output_loss,
            temperature=cfg.temperature,
            hidden_weight=cfg.hidden_weight,
            attention_weight=cfg.attention_weight,
            value_weight=cfg.value_weight,
            mapping=mapping,
            heads=heads,
            checkpoint_dir=ckpt_dir,
            key=key,
            resume=cfg.resume,
            threads=cfg.threads,
            dropout=cfg.dropout,
            qat=cfg.qat,
            on_step=self.on_step,
            console=self.console,
        )
        started = time.perf_counter()
        result = Trainer(plan).run()
        student.eval()
        for p in student.parameters():
            p.requires_grad_(True)
        record = {
            "pass": self.name,
            "config": cfg.model_dump(mode="json"),
            "params_before": before_params,
            "params_after": count_params(student),
            "params_removed": before_params - count_params(student),
            "removed": {"layers_kept_from_teacher": mapping} if mapping else {"student": cfg.student},
            "distill": {
                "student": cfg.student,
                "mapping": mapping,
                "corpus": str(corpus_src or "samples/texts"),
                "train_texts": len(train) + len(extra),
                "train_dropped_as_heldout_duplicates": dropped_as_heldout,
                "extra_texts": len(extra),
                "heldout_texts": len(heldout),
                "heldout_before": result.heldout_before,
                "heldout_after": result.heldout_after,
                "train_seconds": result.train_seconds,
                "train_cpu_seconds": result.train_cpu_seconds,
                "load_average_at_end": list(os.getloadavg()),
                "wall_seconds_this_run": time.perf_counter() - started,
                "extra_source": extra_src,
                "epochs": epochs,
                "epochs_run_this_time": result.epochs_run,
                "resumed_from": result.resumed_from,
                "history": result.history,
                "checkpoint_dir": str(result.checkpoint),
                "threads": result.threads,
                "processes": result.world_size,
            },
            "notes": notes,
        }
        if ctx.records is not None:
            ctx.records.append(record)
        return student
