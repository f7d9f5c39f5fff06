"""Fidelity metrics between teacher and artifact outputs on the same tokenised inputs.

Embeddings: cosine similarity (mean, min) and nearest-neighbour agreement (does each
text's nearest other text stay the same?). Logits: top-1 agreement and the KL
divergence KL(teacher || artifact) of the softmax distributions.
"""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)


def nearest_neighbour_agreement(teacher: np.ndarray, student: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same for teacher and student."""
    if len(teacher) < 2:
        return 1.0

    def nn(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float((nn(teacher) == nn(student)).mean())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def embedding_fidelity(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(teacher, student)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "cosine_p05": float(np.percentile(cos, 5)),
        "nn_agreement": nearest_neighbour_agreement(teacher, student),
        "max_abs_diff": float(np.abs(teacher.astype(np.float64) - student).max()),
    }


def logits_fidelity(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    lt, ls = _log_softmax(teacher), _log_softmax(student)
    kl = (np.exp(lt) * (lt - ls)).sum(axis=1)
    cos = cosine_rows(teacher, student)
    return {
        "top1_agreement": float((teacher.argmax(axis=1) == student.argmax(axis=1)).mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float(np.abs(teacher.astype(np.float64) - student).max()),
    }


def fidelity(task: str, teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
    """Metrics for the task ('embedding' or 'classification')."""
    if teacher.shape != student.shape:
        raise ValueError(f"teacher output {teacher.shape} and artifact output {student.shape} differ in shape")
    return embedding_fidelity(teacher, student) if task == "embedding" else logits_fidelity(teacher, student)
