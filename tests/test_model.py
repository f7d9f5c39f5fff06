"""Teacher loading: tiny models of every family, the embedded default, and every refusal."""

import json

import numpy as np
import pytest
import torch

from edgekit.errors import UserError
from edgekit.model import load_teacher
from edgekit.tiny_models import build_tiny_model_dir


@pytest.mark.parametrize("name", ["bert-embedding", "distilbert-embedding", "bert-classification"])
def test_tiny_models_follow_the_forward_contract(tiny_model_dirs, sample_texts, name):
    teacher = load_teacher(tiny_model_dirs[name])
    inputs = teacher.tokenize(sample_texts[:4], 24)
    assert list(inputs) == teacher.input_names and inputs["input_ids"].shape == (4, 24)
    out = teacher.run(inputs)
    if teacher.task == "embedding":
        assert teacher.output_name == "embedding" and out.shape == (4, 32)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    else:
        assert teacher.output_name == "logits" and out.shape == (4, 3) and teacher.labels[0] == "label_0"


def test_embedded_teacher_is_minilm_with_sentence_transformers_head(sample_texts):
    teacher = load_teacher()
    assert teacher.model_type == "bert" and teacher.task == "embedding"
    assert teacher.pooling.mode == "mean" and teacher.pooling.normalize
    assert teacher.parameter_counts()["total"] == 22_565_376
    inputs = teacher.tokenize(sample_texts[:3], 128)
    out = teacher.run(inputs)
    # The head computed by hand from the encoder's token states: mean over the mask, then L2 normalise.
    with torch.no_grad():
        states = teacher.module.encoder(
            input_ids=torch.from_numpy(inputs["input_ids"]), attention_mask=torch.from_numpy(inputs["attention_mask"])
        ).last_hidden_state.numpy()
    mask = inputs["attention_mask"][..., None]
    mean = (states * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(out, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    # Padding must not change an embedding: the same text at two sequence lengths.
    short = teacher.run(teacher.tokenize(sample_texts[:1], 32))
    np.testing.assert_allclose(short, out[:1], atol=1e-5)


def test_padding_does_not_change_tiny_embeddings(tiny_model_dirs):
    teacher = load_teacher(tiny_model_dirs["bert-embedding"])
    a = teacher.run(teacher.tokenize(["a short text"], 8))
    b = teacher.run(teacher.tokenize(["a short text"], 40))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_missing_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(tmp_path / "nope")


def test_dir_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_teacher(tmp_path)


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_teacher(tmp_path)


def test_corrupt_weights(tmp_path):
    d = build_tiny_model_dir(tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="corrupt"):
        load_teacher(d)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="unsupported architecture 'gpt2'"):
        load_teacher(tmp_path)


def test_pickle_only_is_refused_unless_opted_in(tmp_path):
    d = build_tiny_model_dir(tmp_path / "m", pickle_only=True)
    assert (d / "pytorch_model.bin").exists() and not list(d.glob("*.safetensors"))
    with pytest.raises(UserError, match="--allow-pickle"):
        load_teacher(d)
    assert load_teacher(d, allow_pickle=True).task == "embedding"
