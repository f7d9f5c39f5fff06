"""`vocab-prune`: keep only the vocabulary a corpus needs; rewrite the embedding table and the tokenizer together.

Recipe: `vocab-prune` (corpus: the verification texts), `vocab-prune:corpus=my_texts.txt,min_freq=2`,
`keep_chars=false` to also drop the single-character tokens kept by default as a fallback for
out-of-corpus words.

Kept: the special tokens, every token the teacher's tokenizer produces on the corpus at least
`min_freq` times and (by default) every single-character token and its `##` continuation. Ids keep
their relative order, so [PAD] stays 0. Why the corpus tokenizes exactly as before: WordPiece takes
the longest vocabulary prefix; every piece the original tokenization chose is still there and the
pruned vocabulary is a subset, so no longer prefix can appear. Text outside the corpus may split
into different pieces or [UNK]: that is the trade. The new tokenizer (vocab.txt + tokenizer.json)
replaces the teacher's in the bundle, so the on-device tokenizer produces the new ids.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from edgekit.errors import UserError
from edgekit.passes._saliency import find_encoder
from edgekit.passes.base import Pass, PassConfig, PassContext, register_pass


class VocabPruneConfig(PassConfig):
    corpus: str | None = Field(None, description="a .txt file (one text per line) or a directory of .txt files; default: the texts")
    min_freq: int = Field(1, ge=1, description="keep tokens seen at least this often in the corpus")
    keep_chars: bool = Field(True, description="keep single-character tokens (and ## forms) as a fallback")


def _read_corpus(path: str) -> list[str]:
    from edgekit.verify.texts import load_texts

    p = Path(path)
    if not p.exists():
        raise UserError(f"vocab-prune: corpus {p} does not exist; pass a .txt file (one text per line) or a directory of them")
    try:
        texts = load_texts(p)
    except UserError as exc:
        raise UserError(f"vocab-prune: {exc}") from None
    if not texts:
        raise UserError(f"vocab-prune: corpus {p} is empty; give texts from your domain, one per line")
    return texts


@register_pass
class VocabPrune(Pass):
    name = "vocab-prune"
    Config = VocabPruneConfig

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> nn.Module:
        cfg = self.config
        texts = _read_corpus(cfg.corpus) if cfg.corpus else list(ctx.texts)
        if not texts:
            raise UserError("vocab-prune: no texts to learn the vocabulary from; pass corpus=FILE")
        tokenizer = getattr(ctx, "tokenizer", None) or ctx.teacher.tokenizer
        vocab: dict[str, int] = tokenizer.get_vocab()
        if not type(tokenizer).__name__.startswith(("Bert", "DistilBert")):
            raise UserError(
                f"vocab-prune supports WordPiece tokenizers (BERT, DistilBERT, MiniLM); this model uses {type(tokenizer).__name__}"
            )
        counts: Counter[int] = Counter()
        for text in texts:
            counts.update(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])
        keep = {i for i, c in counts.items() if c >= cfg.min_freq}
        keep |= set(tokenizer.all_special_ids)
        if cfg.keep_chars:
            keep |= {i for tok, i in vocab.items() if len(tok) == 1 or (tok.startswith("##") and len(tok) == 3)}
        kept = sorted(keep)
        enc = find_encoder(model)
        emb = enc.base.embeddings.word_embeddings
        if not isinstance(emb, nn.Embedding):
            raise UserError("vocab-prune: the word embeddings are factorized; put vocab-prune before embed-factorize in the recipe")
        old_size = emb.num_embeddings
        index = torch.tensor(kept, dtype=torch.long)
        pad = getattr(enc.config, "pad_token_id", None)
        new_pad = kept.index(pad) if pad is not None and pad in keep else None
        new_emb = nn.Embedding(len(kept), emb.embedding_dim, padding_idx=new_pad)
        new_emb.weight.copy_(emb.weight[index])
        enc.base.embeddings.word_embeddings = new_emb
        enc.config.vocab_size = len(kept)
        if new_pad is not None:
            enc.config.pad_token_id = new_pad
        ctx.tokenizer = _pruned_tokenizer(tokenizer, kept)
        ctx.records.append(
            {
                "pass": self.name,
                "config": cfg.model_dump(),
                "corpus_texts": len(texts),
                "vocab_before": old_size,
                "vocab_after": len(kept),
                "from_corpus": len({i for i, c in counts.items() if c >= cfg.min_freq}),
                "embedding_params_removed": (old_size - len(kept)) * emb.embedding_dim,
                "notes": ["the bundle's tokenizer is the pruned one; text outside the corpus may tokenize differently"],
            }
        )
        return model


def _pruned_tokenizer(tokenizer, kept: list[int]):
    """The same tokenizer class and settings over the kept tokens, ids renumbered in the original order."""
    from transformers import AutoTokenizer

    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    with tempfile.TemporaryDirectory(prefix="edgekit-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        Path(tmp, "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab.txt
        config_path = Path(tmp, "tokenizer_config.json")
        if config_path.is_file():  # its added_tokens_decoder pins the special tokens to their *old* ids
            config = json.loads(config_path.read_text())
            config.pop("added_tokens_decoder", None)
            config_path.write_text(json.dumps(config))
        Path(tmp, "vocab.txt").write_text("".join(inverse[i] + "\n" for i in kept), encoding="utf-8")
        pruned = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    return pruned  # fast tokenizers hold their state in memory: the directory may go
