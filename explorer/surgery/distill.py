"""Healing toward the unpruned model: what the pruned model is trained to match, and on what text.

Objectives (`HealConfig.objective`):
- "nll": next-token cross-entropy on the training text, the paper's heal (Gromov et al., Sec. 4).
- "kl": KL(teacher || student) over the full vocabulary at every real (unpadded) position, the
  teacher being the unpruned model: logit distillation, as NVIDIA's Minitron heals its depth-pruned
  models (Muralidharan et al., arXiv 2407.14679). The student learns the teacher's whole
  next-token distribution, not only the one token the text happens to continue with.
- "nll+kl": (1 - w) NLL + w KL, w = `kl_weight`.

Temperature T: p = softmax(z_teacher / T), q = softmax(z_student / T) and the loss is
T² · KL(p || q), averaged over the real positions (each position weighs the same, as each label
token does in the NLL). Why T²: the gradient of KL(p || q) with respect to the student's logits is
(q - p) / T, and for soft targets (large T) q - p itself shrinks like 1/T, so the gradient falls as
1/T²; multiplying by T² (Hinton, Vinyals & Dean 2015) keeps the step size, and so the learning
rate's meaning, the same whatever T is. At T = 1 (the default) the factor is 1 and the loss is the
plain KL. Every position counts, the last one too: its next-token distribution is defined for the
teacher even though the text has no next token there.

The teacher costs no second model: the student trains on `explorer.lm.layers.weight_sharing_copy`
of the pruned model, and the teacher is the unpruned model those weights came from (the caller
keeps it: prune_and_heal keeps the removed layers instead of dropping them), so the two hold one
copy of every weight they have in common. They differ by the adapters (LoRA: only the student
has them), by the removed layers (only the teacher runs them), by a linear repair (folded into a
private copy of one student weight) and by trained clones (last-layers: the student's own copy).
The teacher runs without gradients, in eval mode, on the same batch.

Self-data (`HealConfig.data = "self"`, Thangarasa et al., arXiv 2410.09982): the training
documents' first `prompt_tokens` tokens are continued greedily by the unpruned model up to
`seq_len`, and the heal trains on those continuations (the loss skips the prompt): the pruned
model is pulled back toward what the unpruned model itself says, not toward text it never
produced. Generated once per model, text and settings and kept in the store (state.cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.core.errors import ExplorerError
from explorer.lm.forward import inference
from explorer.lm.generate import greedy_continuations

OBJECTIVES = ("nll", "kl", "nll+kl")
DATA = ("text", "self")


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · mean over real positions of KL(softmax(teacher / T) || softmax(student / T)), summed
    over the whole vocabulary; `mask` [batch, tokens] is 1 on real tokens, 0 on padding. Computed
    in float32 whatever the logits' dtype."""
    real = mask.bool()
    if not real.any():
        raise ExplorerError("A distillation batch has no real tokens.")
    student = F.log_softmax(student_logits[real].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[real].float() / temperature, dim=-1)
    per_position = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    return temperature**2 * per_position.mean()


@dataclass(frozen=True)
class HealLoss:
    """The loss of one heal step: (1 - w) NLL + w T² KL with w = 0 for "nll", 1 for "kl" and
    `kl_weight` for "nll+kl". `teacher` (the unpruned model's module) is needed whenever w > 0."""

    objective: str = "nll"
    temperature: float = 1.0
    kl_weight: float = 0.5
    teacher: nn.Module | None = None

    @property
    def weights(self) -> tuple[float, float]:
        """(NLL weight, KL weight)."""
        kl = {"nll": 0.0, "kl": 1.0, "nll+kl": self.kl_weight}[self.objective]
        return 1.0 - kl, kl

    def __call__(self, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 nll_scale: float = 1.0, kl_scale: float = 1.0) -> torch.Tensor:
        """The loss on one (share of a) batch. `nll_scale` and `kl_scale` weigh this process's share
        in a data-parallel step (explorer.surgery.parallel: its label tokens, its real tokens)."""
        nll_weight, kl_weight = self.weights
        output = model(input_ids=input_ids, attention_mask=mask, labels=labels if nll_weight else None, use_cache=False)
        total = nll_weight * nll_scale * output.loss if nll_weight else 0.0
        if kl_weight:
            if self.teacher is None:
                raise ExplorerError(f"The {self.objective} objective distills from the unpruned model, and none was given.")
            with inference(self.teacher):
                teacher_logits = self.teacher(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            total = total + kl_weight * kl_scale * kl_loss(output.logits, teacher_logits, mask, self.temperature)
        return total


@dataclass
class SelfData:
    """Training documents written by the unpruned model: each is a prompt (the start of a text
    document) and its greedy continuation; the loss is taken on the continuation only."""

    documents: list[list[int]]  # prompt + continuation token ids
    prompt_lengths: list[int]
    run_id: int | None = None  # the "self-data" run that holds them, when stored

    def to_json(self) -> dict:
        return {"documents": self.documents, "prompt_lengths": self.prompt_lengths}

    @classmethod
    def from_json(cls, data: dict, run_id: int | None = None) -> "SelfData":
        return cls(data["documents"], data["prompt_lengths"], run_id)

    def summary(self) -> dict[str, Any]:
        """What a heal's record says about its data."""
        generated = sum(len(d) - p for d, p in zip(self.documents, self.prompt_lengths))
        return {"run_id": self.run_id, "documents": len(self.documents), "generated_tokens": generated}


def self_prompts(documents: list[list[int]], prompt_tokens: int) -> list[list[int]]:
    """Each document's first `prompt_tokens` tokens (a shorter document's all but its last token, so
    every prompt leaves room to continue and is never empty)."""
    return [doc[: max(1, min(prompt_tokens, len(doc) - 1))] for doc in documents]


def generate_self_data(teacher, documents: list[list[int]], prompt_tokens: int, seq_len: int, batch_size: int) -> SelfData:
    """The teacher's (a LoadedModel) greedy continuation of each document's prompt, up to `seq_len` tokens in all."""
    prompts = self_prompts(documents, prompt_tokens)
    by_room: dict[int, list[int]] = {}  # prompts needing the same number of new tokens generate together
    for index, prompt in enumerate(prompts):
        by_room.setdefault(seq_len - len(prompt), []).append(index)
    continuations: list[list[int]] = [[] for _ in prompts]
    for room, indices in by_room.items():
        for index, tokens in zip(indices, greedy_continuations(teacher, [prompts[i] for i in indices], room, batch_size)):
            continuations[index] = tokens
    kept = [(p, c) for p, c in zip(prompts, continuations) if c]
    if not kept:
        raise ExplorerError("The unpruned model generated nothing for any prompt (it ends every prompt at once).")
    return SelfData([p + c for p, c in kept], [len(p) for p, _ in kept])
