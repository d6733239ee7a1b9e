"""Distillation losses: soft targets at a temperature (Hinton et al. 2015), mixed with hard labels,
and MSE or cosine for embeddings and hidden states; the default chosen by what an output is.

Soft targets: T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the batch (the T²
keeps the gradients' scale as T changes). With labels: alpha · soft + (1 − alpha) · cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

LOSSES = ("kl", "mse", "cosine")
MASK = "attention_mask"  # a text model's input: hidden states at its 0s (padding) are neither trained nor judged


def default_loss(shape: Sequence[int | str | None]) -> str:
    """kl for class scores ([batch, classes]); cosine for embeddings and hidden states (a rank of 3 or
    more: [batch, tokens, hidden]), where the direction is what a downstream similarity reads."""
    return "kl" if len(shape) == 2 else "cosine"


def soft_targets(student, teacher, temperature: float):
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), the batch's mean, over the last axis."""
    import torch.nn.functional as F

    student_log = F.log_softmax(student / temperature, dim=-1)
    teacher_log = F.log_softmax(teacher / temperature, dim=-1)
    per_row = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)
    return per_row.mean() * temperature * temperature


def distillation_loss(kind: str, student, teacher, *, labels=None, alpha: float = 0.5,
                      temperature: float = 2.0, mask=None):
    """The loss of one output. `labels` (class indices) mix in cross-entropy for kl only; `mask` ([batch,
    tokens], 1 for real tokens) leaves the padding's hidden states out of mse and cosine."""
    import torch.nn.functional as F

    if kind in ("mse", "cosine") and mask is not None and student.dim() == 3 and tuple(mask.shape) == tuple(
            student.shape[:2]):
        per_token = F.mse_loss(student, teacher, reduction="none").mean(-1) if kind == "mse" else \
            1.0 - F.cosine_similarity(student, teacher, dim=-1)
        weights = mask.to(per_token.dtype)
        return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
    if kind == "kl":
        soft = soft_targets(student, teacher, temperature)
        if labels is None:
            return soft
        return alpha * soft + (1.0 - alpha) * F.cross_entropy(student.reshape(-1, student.shape[-1]),
                                                               labels.reshape(-1))
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown loss {kind!r} (choose from {', '.join(LOSSES)})")
