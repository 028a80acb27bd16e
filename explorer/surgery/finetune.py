"""Prompt-based finetuning of a cut model, after "Why Lift so Heavy?" (Yuan, Nie, Ma & Färber, arXiv 2402.11700).

The paper keeps only the first k layers of GPT-2 XL / OPT (top-cut), finetunes what is left on
SST-2 / AG News and finds classification accuracy holds. Three modes per pruned model:

- "icl": no training; the task's own scorer (`ClassificationTask.score`, label words by the LM head).
- "prompt-ft": the same prompt (template, optional demonstrations) and label words, trained with
  the cross-entropy over the label words' log-probabilities at the answer position: a word's score
  s_k is the SUM of its tokens' log-probs (as the scorer sums them) and the loss is
  -log softmax(s)[gold]. Tokenization is the scorer's (`scoring.encode_pair`, left truncation to
  the context length), so with zero steps the predictions equal the in-context scorer's.
- "head-ft": the paper's second variant: a linear head (zero-initialized, one output per label)
  on the final-token state of the prompt after the last kept layer and the final norm (the
  backbone's `last_hidden_state`), trained with the usual cross-entropy.

What trains (`FinetuneConfig.weights`): "lora" adapters on the kept layers' linear projections
(`heal.training_model`, on a copy), "all" kept weights (small models: embeddings, layers, norm,
LM head), or "none" (head-ft only: a linear probe on frozen features). The pruned model is a
weight-sharing view (`explorer.lm.layers.pruned_view`); training always works on its own copy.
`measure` is one point of the accuracy-vs-k curve (explorer.experiments.classify).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from explorer.core.errors import Cancelled, ExplorerError
from explorer.core.options import setting
from explorer.evaluation.scoring import encode_pair, max_length
from explorer.lm.data import pad_batch
from explorer.lm.forward import inference
from explorer.lm.models import LoadedModel
from explorer.surgery.heal import HealConfig, lr_at, optimizer_step, training_model

MODES = ("icl", "prompt-ft", "head-ft")
WEIGHTS = ("lora", "all", "none")
OnEvent = Callable[[dict], None]
ShouldStop = Callable[[], bool]


class ClassifyCancelled(Cancelled):
    """The user stopped the run; the points measured so far stay in the store."""


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run per point. Defaults are CPU-demo sized (the paper trains for epochs)."""

    steps: int = setting(30, "finetuning steps per point (0: the untrained model)", label="Finetuning steps")
    batch_size: int = setting(8, "training examples per step", flag="--train-batch-size", label="Training batch size")
    lr: float | None = setting(None, "peak learning rate (default 3e-3 for LoRA or a probe, 3e-5 for all weights)",
                               label="Learning rate")
    head_lr: float = setting(1e-2, "the classification head's peak learning rate (head-ft)", label="Head learning rate")
    warmup_steps: int = setting(3, "steps of linear warm-up, then cosine decay (heal's schedule)", label="Warm-up steps")
    weights: str = setting("lora", "what trains: lora (adapters on the kept layers), all (every kept weight) or none "
                           "(head-ft only: a probe on frozen features)", choices=WEIGHTS, label="Weights trained")
    rank: int = setting(8, "LoRA rank", label="LoRA rank")
    alpha: int = setting(16, "LoRA alpha", label="LoRA alpha")
    dropout: float = setting(0.0, "LoRA dropout", label="LoRA dropout")
    seed: int = setting(0, "seed of the head, the adapters and the training order", label="Seed")

    def check(self, mode: str = "prompt-ft") -> None:
        if self.steps < 0 or self.batch_size < 1 or self.rank < 1:
            raise ExplorerError("Finetuning needs steps >= 0, a batch size and a LoRA rank of at least 1.")
        if self.weights not in WEIGHTS:
            raise ExplorerError(f"Unknown weights '{self.weights}' to train: choose one of {', '.join(WEIGHTS)}.")
        if self.weights == "none" and mode == "prompt-ft":
            raise ExplorerError("prompt-ft with weights 'none' trains nothing (that is icl): choose lora or all.")
        if (self.lr is not None and not self.lr > 0) or not self.head_lr > 0:
            raise ExplorerError("Learning rates must be positive numbers.")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (3e-5 if self.weights == "all" else 3e-3)


@dataclass(frozen=True)
class Prompted:
    """One example's model inputs: the distinct token rows and, per label word, (row, position
    predicting its first token, its tokens). Single-token words share one row."""

    id: str
    label: int
    rows: tuple[tuple[int, ...], ...]
    words: tuple[tuple[int, int, tuple[int, ...]], ...]

    @property
    def prompt_row(self) -> int:
        """The row holding the bare prompt (the head reads its last token)."""
        return self.words[0][0]

    @property
    def prompt_last(self) -> int:
        """Position of the prompt's last token (it predicts every word's first token)."""
        return self.words[0][1]


def encode_example(tokenizer, context: str, words: tuple[str, ...], limit: int, example_id: str = "", label: int = 0) -> Prompted:
    """The scorer's tokenization of (context, " word") for every label word."""
    rows: dict[tuple[int, ...], int] = {}
    entries = []
    for word in words:
        context_enc, cont = encode_pair(tokenizer, context, f" {word}")
        unk = getattr(tokenizer, "unk_token_id", None)
        if not cont or (unk is not None and unk in cont):
            raise ExplorerError(
                f"The label word {word!r} is not in the model's vocabulary (it encodes to "
                f"{'nothing' if not cont else 'the unknown token'}): choose other label words."
            )
        row = (context_enc + cont)[-(limit + 1):][:-1]
        entries.append((rows.setdefault(tuple(row), len(rows)), len(row) - len(cont), tuple(cont)))
    return Prompted(example_id, label, tuple(rows), tuple(entries))


def encode_task(loaded: LoadedModel, task, examples) -> list[Prompted]:
    limit = max_length(loaded)
    return [encode_example(loaded.tokenizer, task.context(e), task.words, limit, e.id, e.label) for e in examples]


def base_of(model: nn.Module) -> nn.Module:
    """The causal-LM model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _final_hidden(model: nn.Module, rows: list[tuple[int, ...]], pad_id: int, device) -> torch.Tensor:
    """[R, T, H] states after the last kept layer and the final norm (right-padded rows)."""
    input_ids, mask = pad_batch([list(r) for r in rows], pad_id)
    return base_of(model).base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state


def lm_logits(model: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The LM head on chosen states only: at a 49k vocabulary the head over every position would
    cost more than a small cut model's layers. Applies the final logit soft-capping some families
    (gemma2) configure, as their forward does."""
    causal = base_of(model)
    logits = causal.get_output_embeddings()(states)
    cap = getattr(causal.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def label_word_scores(model: nn.Module, batch: list[Prompted], pad_id: int, device) -> torch.Tensor:
    """[B, K] summed log-probs of each label word after each example's prompt (differentiable)."""
    rows, offsets = [], []
    for item in batch:
        offsets.append(len(rows))
        rows.extend(item.rows)
    hidden = _final_hidden(model, rows, pad_id, device)
    picks, targets, owners = [], [], []  # one entry per scored token: (row, position), its id, its (example, word)
    for b, (item, offset) in enumerate(zip(batch, offsets)):
        for w, (row, start, tokens) in enumerate(item.words):
            for t, token in enumerate(tokens):
                picks.append((offset + row, start + t))
                targets.append(token)
                owners.append(b * len(item.words) + w)
    index = torch.tensor(picks, device=hidden.device)
    logprobs = torch.log_softmax(lm_logits(model, hidden[index[:, 0], index[:, 1]]).float(), dim=-1)
    token_scores = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0]
    sums = torch.zeros(len(batch) * len(batch[0].words), device=token_scores.device).index_add(
        0, torch.tensor(owners, device=token_scores.device), token_scores)
    return sums.view(len(batch), -1)


def final_states(model: nn.Module, batch: list[Prompted], pad_id: int, device) -> torch.Tensor:
    """[B, H] state of each prompt's last token after the last kept layer and the final norm."""
    hidden = _final_hidden(model, [item.rows[item.prompt_row] for item in batch], pad_id, device)
    ends = torch.tensor([item.prompt_last for item in batch], device=hidden.device)
    return hidden[torch.arange(len(batch), device=hidden.device), ends].float()


@dataclass
class Classifier:
    """A trainable pruned model for one mode: `logits(batch)` is [B, K] class scores."""

    model: nn.Module
    mode: str
    pad_id: int
    device: torch.device
    head: nn.Linear | None = None
    frozen: bool = False  # the model's weights do not train (a probe on shared, frozen features)

    def logits(self, batch: list[Prompted]) -> torch.Tensor:
        if self.mode == "head-ft":
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                states = final_states(self.model, batch, self.pad_id, self.device)
            return self.head(states)
        return label_word_scores(self.model, batch, self.pad_id, self.device)

    def loss(self, batch: list[Prompted]) -> torch.Tensor:
        gold = torch.tensor([item.label for item in batch], device=self.device)
        return nn.functional.cross_entropy(self.logits(batch), gold)

    def modules(self) -> list[nn.Module]:
        return [self.model] + ([self.head] if self.head is not None else [])

    def evaluate(self, items: list[Prompted], batch_size: int = 8) -> tuple[float, list[list[float]]]:
        """(mean loss, per-example class scores) without dropout or gradients."""
        total, scores = 0.0, []
        with inference(self.model):
            for i in range(0, len(items), batch_size):
                batch = items[i:i + batch_size]
                logits = self.logits(batch)
                gold = torch.tensor([item.label for item in batch], device=logits.device)
                total += nn.functional.cross_entropy(logits, gold, reduction="sum").item()
                scores.extend(logits.tolist())
        return total / len(items), scores


def build_classifier(pruned: LoadedModel, mode: str, config: FinetuneConfig, num_labels: int) -> Classifier:
    """The model (and head) that trains: LoRA on a copy, all weights of a copy, or frozen (probe)."""
    config.check(mode)
    pad_id = pruned.tokenizer.pad_token_id or 0
    if config.weights == "lora":
        model = training_model(pruned, HealConfig(rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                                                  quantize=False, seed=config.seed))
    elif config.weights == "all":
        model = copy.deepcopy(pruned.model)
        model.config.use_cache = False
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        model = pruned.model
    head = None
    if mode == "head-ft":
        width = pruned.model.get_output_embeddings().weight.shape[1]
        head = nn.Linear(width, num_labels).to(pruned.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return Classifier(model, mode, pad_id, pruned.device, head, frozen=config.weights == "none")


def training_order(count: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """`steps` batches of example indices: seeded shuffles of the split, one epoch after another."""
    rng, order = random.Random(seed), []
    while len(order) < steps * batch_size:
        epoch = list(range(count))
        rng.shuffle(epoch)
        order += epoch
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def train(classifier: Classifier, items: list[Prompted], config: FinetuneConfig,
          on_event: OnEvent = lambda event: None, should_stop: ShouldStop = lambda: False) -> None:
    """AdamW with heal's warm-up/cosine schedule; one "train" event (loss) per step."""
    if not items:
        raise ExplorerError("This task has no training examples: set a training split (train N) to finetune.")
    peak = config.peak_lr
    groups = [{"params": [] if classifier.frozen else [p for p in classifier.model.parameters() if p.requires_grad]}]
    if classifier.head is not None:
        groups.append({"params": list(classifier.head.parameters()), "lr_scale": config.head_lr / peak})
    groups = [g for g in groups if g["params"]]
    if not groups or not config.steps:
        return
    optimizer = torch.optim.AdamW(groups, lr=peak, weight_decay=0.0)
    schedule = replace(config, lr=peak)
    moving = [classifier.head] if classifier.frozen else classifier.modules()
    for module in moving:
        module.train()
    oom = f"Out of memory while finetuning with batch size {config.batch_size}: use a smaller batch or LoRA."
    try:
        for step, indices in enumerate(training_order(len(items), config.steps, config.batch_size, config.seed), 1):
            if should_stop():
                raise ClassifyCancelled(f"Finetuning was cancelled after {step - 1} of {config.steps} steps.")
            batch = [items[i] for i in indices]
            loss = optimizer_step(optimizer, lambda: classifier.loss(batch), lr_at(step - 1, schedule), step, oom)
            on_event({"kind": "train", "step": step, "train_loss": loss})
    finally:
        for module in moving:
            module.eval()


def count_trainable(classifier: Classifier) -> int:
    modules = [classifier.head] if classifier.frozen else classifier.modules()
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def measure(pruned: LoadedModel, task, mode: str, config: FinetuneConfig, limit: int | None, batch_size: int,
            should_stop: ShouldStop = lambda: False) -> dict:
    """One point's predictions on the held-out examples, with its training loss and cost."""
    examples = task.examples[:limit]
    started = time.perf_counter()
    if mode == "icl":
        results = task.score(pruned, limit, batch_size)
        preds = [(r.id, task.words.index(r.pred), task.words.index(r.gold)) for r in results]
        return {"predictions": preds, "train_seconds": 0.0, "eval_seconds": time.perf_counter() - started,
                "trainable_params": 0, "train_loss_before": None, "train_loss_after": None}
    train_items = encode_task(pruned, task, task.train_examples)
    test_items = encode_task(pruned, task, examples)
    classifier = build_classifier(pruned, mode, config, len(task.words))
    before, _ = classifier.evaluate(train_items, batch_size)
    train(classifier, train_items, config, should_stop=should_stop)
    train_seconds = time.perf_counter() - started
    after, _ = classifier.evaluate(train_items, batch_size)
    _, scores = classifier.evaluate(test_items, batch_size)
    preds = [(item.id, max(range(len(row)), key=row.__getitem__), item.label) for item, row in zip(test_items, scores)]
    return {"predictions": preds, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - started - train_seconds,
            "trainable_params": count_trainable(classifier), "train_loss_before": before, "train_loss_after": after}
