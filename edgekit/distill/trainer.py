"""The distillation loop: AdamW with warm-up and linear decay, a checkpoint per epoch, resume after Ctrl-C.

Resumption is exact: an epoch's texts (and their augmentations) are a function of (seed, epoch), so a run
interrupted at batch s of epoch e reloads the student, optimizer, schedule and RNG state and continues
with batch s of the same epoch. A finished run leaves its final checkpoint, so repeating the same command
reuses the trained student instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from edgekit.distill import ddp, losses
from edgekit.distill.capture import Captured, capture
from edgekit.distill.data import batches, bucketed_batches, epoch_texts, tokenize
from edgekit.distill.teacher_cache import TeacherCache
from edgekit.errors import UserError

#: called after every optimizer step with (epoch, step within the epoch); tests raise KeyboardInterrupt in it
StepHook = Callable[[int, int], None]


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "distill"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_key(parts: dict[str, Any]) -> str:
    """A stable hash of everything that determines the trained student (config, teacher, corpus, start model)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Plan:
    """What to train and how, resolved by the pass from its config and context."""

    student: nn.Module
    teacher: nn.Module
    tokenizer: Any
    task: str
    #: corpus training texts (augmented) and extra training-only texts (used as they are)
    train: list[str]
    heldout: list[str]
    max_len: int
    with_token_types: bool
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: float
    seed: int
    augment: list[str]
    augment_copies: int
    output_weight: float
    output_kind: str
    temperature: float
    hidden_weight: float
    attention_weight: float
    value_weight: float
    #: student layer i is supervised by teacher layer mapping[i] (empty: output loss only)
    mapping: list[int]
    heads: int
    checkpoint_dir: Path
    key: str
    resume: bool = True
    #: None: every core this process may use
    threads: int | None = None
    dropout: bool = False
    #: train through int8 fake quantization of the layer Linears (see `edgekit/distill/qat.py`)
    qat: bool = False
    on_step: StepHook | None = None
    console: Console | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


@dataclass
class Result:
    heldout_before: dict[str, float]
    heldout_after: dict[str, float]
    train_seconds: float
    #: CPU time of this process while training: comparable across runs when other jobs share the cores
    train_cpu_seconds: float
    epochs_run: int
    resumed_from: dict[str, int] | None
    world_size: int
    #: torch threads the loop ran with
    threads: int
    history: list[dict[str, float]]
    checkpoint: Path


def _batch_outputs(model: nn.Module, tokenizer, texts: list[str], max_len: int, with_tt: bool) -> torch.Tensor:
    """The model's outputs for `texts`, in order; batched by length so short texts are not padded to long ones."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    rows = []
    with torch.no_grad():
        for chunk in batches([texts[i] for i in order], 64):
            rows.append(model(**tokenize(tokenizer, chunk, max_len, with_tt)).float())
    out = torch.cat(rows)
    return out[torch.argsort(torch.tensor(order))]


def heldout_metrics(task: str, student_out: torch.Tensor, teacher_out: torch.Tensor) -> dict[str, float]:
    """Fidelity on the held-out texts: mean/min cosine (embeddings) or top-1 agreement and KL (logits)."""
    if task == "classification":
        agree = (student_out.argmax(-1) == teacher_out.argmax(-1)).double().mean()
        kl = losses.output_loss(student_out.double(), teacher_out.double(), task, temperature=1.0)
        return {"top1_agreement": float(agree), "kl": float(kl)}
    cos = torch.nn.functional.cosine_similarity(student_out.double(), teacher_out.double(), dim=-1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def _headline(task: str, metrics: dict[str, float]) -> str:
    return f"top1 {metrics['top1_agreement']:.3f}" if task == "classification" else f"cos {metrics['cosine_mean']:.4f}"


class Trainer:
    def __init__(self, plan: Plan) -> None:
        self.p = plan
        self._qat = None
        if plan.qat:  # before the optimizer exists, so it holds the parameters the fake-quantized forward uses
            from edgekit.distill.qat import fake_quant

            self._qat = fake_quant(plan.student)
            self._qat.__enter__()
        self.rank, self.world = ddp.world()
        self.forward = plan.student
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(plan.student)
        self.params = [q for q in plan.student.parameters() if q.requires_grad]
        # fused: one kernel for all parameters, ~4x faster than the per-tensor loop on CPU (a tenth of each step here)
        self.optimizer = torch.optim.AdamW(self.params, lr=plan.lr, weight_decay=plan.weight_decay, fused=True)
        first_epoch = epoch_texts(plan.train, plan.augment, plan.augment_copies, plan.seed, 0, "[MASK]", plan.extra)
        self.steps_per_epoch = len(self.my_batches(first_epoch, 0))
        total = max(1, self.steps_per_epoch * plan.epochs)
        warm = max(1, int(plan.warmup * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
        )
        self.mask_token = getattr(plan.tokenizer, "mask_token", None) or "[MASK]"
        # relation losses need the teacher's q/k/v too; they are not cached, so those runs recompute the teacher
        self.cache = (
            TeacherCache(set(plan.train) | set(plan.extra), plan.mapping if plan.hidden_weight > 0 else [])
            if plan.epochs > 1 and not (plan.mapping and (plan.attention_weight or plan.value_weight))
            else None
        )

    def my_batches(self, texts: list[str], epoch: int) -> list[list[str]]:
        """This rank's batches of the epoch: every `world`-th, the same count on every rank (DDP steps in lockstep)."""
        every = bucketed_batches(texts, self.p.batch_size, self.p.seed, epoch)
        every = every[: max(1, len(every) // self.world) * self.world] if self.world > 1 else every
        return every[self.rank :: self.world]

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self, epoch: int, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": self.p.key,
            "epoch": epoch,
            "step": step,
            "student": self.p.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": self.p.history,
            **extra,
        }

    def save(self, name: str, epoch: int, step: int, extra: dict[str, Any]) -> Path:
        """Write atomically (temp file + rename), so an interrupt during the write never leaves a broken checkpoint."""
        path = self.p.checkpoint_dir / name
        if self.rank != 0:  # rank 0 writes for everyone
            return path
        self.p.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self._state(epoch, step, extra), tmp)
        os.replace(tmp, path)
        return path

    def latest(self) -> dict[str, Any] | None:
        found = []
        for f in sorted(self.p.checkpoint_dir.glob("*.pt")) if self.p.checkpoint_dir.is_dir() else []:
            state = torch.load(f, map_location="cpu", weights_only=False)
            if state.get("key") != self.p.key:
                raise UserError(
                    f"distill: checkpoint {f} belongs to another run (config, teacher or corpus differ); "
                    "choose another --checkpoint-dir or delete it"
                )
            found.append((state["epoch"], state["step"], state))
        return max(found, key=lambda t: (t[0], t[1]))[2] if found else None

    def _restore(self, state: dict[str, Any]) -> None:
        self.p.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.p.history[:] = state["history"]

    # -- one step ----------------------------------------------------------------------------------
    def teacher_targets(self, batch: dict[str, torch.Tensor], texts: list[str] | None, want_h: bool, want_a: bool, want_v: bool):
        """The teacher's output and captured tensors for the batch; with the cache, the teacher runs only on the
        batch's texts it has not seen (recurring ones are kept, augmented variants only for this batch)."""
        p = self.p
        mask = batch["attention_mask"]
        if self.cache is None or texts is None:
            with torch.no_grad(), capture(p.teacher, p.mapping, want_h, want_a, want_v) as tc:
                t_out = p.teacher(**batch)
            return t_out, tc
        missing = self.cache.missing(texts)
        if missing:
            sub = tokenize(p.tokenizer, missing, p.max_len, p.with_token_types)
            with torch.no_grad(), capture(p.teacher, p.mapping, want_h, False, False) as tc:
                sub_out = p.teacher(**sub)
            self.cache.store(missing, sub["attention_mask"], sub_out, tc.states)
        out, states = self.cache.lookup(texts, mask)
        self.cache.end_batch()
        return out, Captured(states=states)

    def loss(self, batch: dict[str, torch.Tensor], texts: list[str] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.p
        want_h, want_a, want_v = (bool(p.mapping) and w > 0 for w in (p.hidden_weight, p.attention_weight, p.value_weight))
        s_layers = list(range(len(p.mapping)))
        with capture(p.student, s_layers, want_h, want_a, want_v) as sc:
            s_out = self.forward(**batch)
        t_out, tc = self.teacher_targets(batch, texts, want_h, want_a, want_v)
        mask = batch["attention_mask"]
        parts = {"output": p.output_weight * losses.output_loss(s_out, t_out, p.task, p.output_kind, p.temperature)}
        if want_h:
            parts["hidden"] = p.hidden_weight * losses.hidden_loss(
                [sc.states[i] for i in s_layers], [tc.states[j] for j in p.mapping], mask
            )
        if want_a:
            sqk = [(sc.q[i], sc.k[i]) for i in s_layers]
            tqk = [(tc.q[j], tc.k[j]) for j in p.mapping]
            parts["attention"] = p.attention_weight * losses.attention_loss(sqk, tqk, p.heads, mask)
        if want_v:
            parts["value"] = p.value_weight * losses.value_relation_loss(
                [sc.v[i] for i in s_layers], [tc.v[j] for j in p.mapping], p.heads, mask
            )
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Result:
        p = self.p
        previous_threads = torch.get_num_threads()
        # under torchrun the processes share the cores: each takes its share unless told otherwise
        self.threads = max(1, min(p.threads or usable_cores() // self.world, usable_cores()))
        torch.set_num_threads(self.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(previous_threads)
            if self._qat is not None:
                self._qat.__exit__(None, None, None)  # float weights stay: an ordinary model again
                self._qat = None

    def _run(self) -> Result:
        p = self.p
        p.teacher.eval()
        teacher_held = _batch_outputs(p.teacher, p.tokenizer, p.heldout, p.max_len, p.with_token_types)

        def evaluate() -> dict[str, float]:
            was = p.student.training
            p.student.eval()
            out = _batch_outputs(p.student, p.tokenizer, p.heldout, p.max_len, p.with_token_types)
            p.student.train(was)
            return heldout_metrics(p.task, out, teacher_held)

        state = self.latest() if p.resume else None
        if state is not None:
            self._restore(state)
            before, seconds, cpu = state["heldout_before"], state["train_seconds"], state.get("train_cpu_seconds", 0.0)
            start_epoch, start_step = state["epoch"], state["step"]
            resumed = {"epoch": start_epoch, "step": start_step}
        else:
            before, seconds, cpu, start_epoch, start_step, resumed = evaluate(), 0.0, 0.0, 0, 0, None
            torch.manual_seed(p.seed)
        console = p.console or Console(stderr=True)
        epoch, step = start_epoch, start_step
        metrics = p.history[-1] if p.history else {}
        last_loss = float("nan")
        started, cpu_started = time.perf_counter(), time.process_time()

        def extra() -> dict[str, Any]:
            return {
                "heldout_before": before,
                "train_seconds": seconds + time.perf_counter() - started,
                "train_cpu_seconds": cpu + time.process_time() - cpu_started,
            }

        total_steps = self.steps_per_epoch * p.epochs
        columns = (
            TextColumn("distill"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  held-out {task.fields[held]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        held_text = _headline(p.task, metrics) if metrics else _headline(p.task, before)
        try:
            with Progress(*columns, console=console, transient=True, disable=self.rank != 0) as bar:
                task = bar.add_task(
                    "distill",
                    total=total_steps,
                    completed=epoch * self.steps_per_epoch + step,
                    epoch=f"{epoch + 1}/{p.epochs}",
                    loss="-",
                    held=held_text,
                )
                p.student.train(p.dropout)  # without dropout the student fits the teacher's deterministic outputs directly
                while epoch < p.epochs:
                    texts = epoch_texts(p.train, p.augment, p.augment_copies, p.seed, epoch, self.mask_token, p.extra)
                    for chunk in self.my_batches(texts, epoch)[step:]:
                        batch = tokenize(p.tokenizer, chunk, p.max_len, p.with_token_types)
                        loss, _parts = self.loss(batch, chunk)
                        self.optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                        self.optimizer.step()
                        self.scheduler.step()
                        step += 1
                        last_loss = float(loss.detach())
                        bar.update(task, advance=1, loss=f"{last_loss:.4f}")
                        if p.on_step is not None:
                            p.on_step(epoch, step)
                    metrics = evaluate() | {"epoch": epoch + 1, "loss": last_loss}
                    p.history.append(metrics)
                    epoch, step = epoch + 1, 0
                    path = self.save(f"epoch-{epoch:03d}.pt", epoch, 0, extra())
                    for old in p.checkpoint_dir.glob("*.pt") if self.rank == 0 else []:  # one checkpoint on disk: the latest
                        if old != path:
                            old.unlink(missing_ok=True)
                    ddp.barrier()
                    bar.update(task, epoch=f"{min(epoch + 1, p.epochs)}/{p.epochs}", held=_headline(p.task, metrics))
        except KeyboardInterrupt:
            path = self.save("interrupted.pt", epoch, step, extra())
            console.print(
                f"distill: interrupted at epoch {epoch + 1} batch {step}; checkpoint saved to {path} — run the same command again to resume"
            )
            raise
        p.student.eval()
        spent = extra()
        after = evaluate()
        return Result(
            heldout_before=before,
            heldout_after=after,
            train_seconds=spent["train_seconds"],
            train_cpu_seconds=spent["train_cpu_seconds"],
            epochs_run=epoch - start_epoch,
            world_size=self.world,
            threads=self.threads,
            resumed_from=resumed,
            history=p.history,
            checkpoint=p.checkpoint_dir,
        )
