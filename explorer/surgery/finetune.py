"""Prompt-based finetuning of a cut model, after "Why Lift so Heavy?" (Men et al., arXiv 2402.11700).

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
weight-sharing view (`prune.pruned_view`); training always works on its own copy.

The curve (`run_classify`): for each strategy ("top-cut", "similarity"), each k (layers kept)
and each mode, one "point" event with every held-out example's prediction and gold label, the
accuracy computed from them (95% Wilson interval), the chance line, the train / test split sizes
and the finetuning cost in seconds. Points go to a store run of kind "classify", so the
background job (`explorer.jobs`) and the page draw them live.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import torch
from torch import nn

from explorer.lm.data import pad_batch
from explorer.core.errors import Cancelled, ExplorerError
from explorer.lm.models import LoadedModel, load_model
from explorer.surgery.prune import strategy_block
from explorer.evaluation.scoring import encode_pair, max_length
from explorer.lm.forward import inference

MODES = ("icl", "prompt-ft", "head-ft")
WEIGHTS = ("lora", "all", "none")
CLASSIFY_STRATEGIES = ("top-cut", "similarity")
OnEvent = Callable[[dict], None]
ShouldStop = Callable[[], bool]


class ClassifyCancelled(Cancelled):
    """The user stopped the run; the points measured so far stay in the store."""


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run per point. Defaults are CPU-demo sized (the paper trains for epochs)."""

    steps: int = 30
    batch_size: int = 8
    lr: float | None = None  # peak; None = 3e-3 for LoRA / a probe, 3e-5 for all weights
    head_lr: float = 1e-2  # the classification head's peak learning rate (head-ft)
    warmup_steps: int = 3  # linear warm-up, then cosine decay (heal.lr_at)
    weights: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    seed: int = 0

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
    from explorer.surgery.heal import HealConfig, training_model

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
    from explorer.surgery.heal import lr_at, optimizer_step

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


# ---------------------------------------------------------------------------------------------
# The accuracy-vs-k curve


@dataclass(frozen=True)
class ClassifySettings:
    """Everything a classify run measures: the task and split, the cuts, the modes, finetuning."""

    model: str = "embedded"
    task: str = "sst2"
    data_file: str | None = "embedded"  # None = the hub; "embedded" = Pang & Lee (sst2); or a .csv/.jsonl
    shots: int = 0
    label_words: str | None = None
    train: int = 80  # training examples held out of the scored set
    strategies: tuple[str, ...] = ("top-cut",)
    keep: tuple[int, ...] = (1, 2, 4, 8, 15, 22, 30)  # layers kept; each must be 1..L
    modes: tuple[str, ...] = MODES
    finetune: dict = field(default_factory=dict)  # FinetuneConfig fields
    limit: int | None = None  # scored examples (None: every held-out one)
    batch_size: int = 8
    text: str = "embedded"  # calibration text for the similarity heatmap
    sim_samples: int = 32
    seq_len: int = 128
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("strategies", "keep", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def task_options(self) -> dict:
        options = {"data_file": self.data_file, "shots": self.shots, "train": self.train}
        return {**options, **({"label_words": self.label_words} if self.label_words else {})}

    def make_task(self):
        from explorer.evaluation.tasks import get_task

        if self.task not in ("sst2", "agnews"):
            raise ExplorerError(f"classify takes a classification task (sst2 or agnews), not '{self.task}'.")
        return get_task(self.task, **self.task_options())

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.finetune)

    def check(self):
        """Reject bad settings before any model loads; returns the task (with its splits)."""
        from explorer.evaluation.questions import check_limit

        if not self.strategies or not set(self.strategies) <= set(CLASSIFY_STRATEGIES):
            raise ExplorerError(f"Choose strategies among {', '.join(CLASSIFY_STRATEGIES)} (got {', '.join(self.strategies) or 'none'}).")
        if not self.modes or not set(self.modes) <= set(MODES):
            raise ExplorerError(f"Choose modes among {', '.join(MODES)} (got {', '.join(self.modes) or 'none'}).")
        if not self.keep or min(self.keep) < 1:
            raise ExplorerError(f"Layers kept (k) must be at least 1, got {', '.join(map(str, self.keep)) or 'none'}.")
        check_limit(self.limit)
        for mode in self.modes:
            if mode != "icl":
                self.finetune_config().check(mode)
        task = self.make_task()
        if any(m != "icl" for m in self.modes) and not task.train_examples:
            raise ExplorerError(f"{task.name} has no training examples for {'/'.join(m for m in self.modes if m != 'icl')}: "
                                "hold some out (train N, e.g. 80) or use mode icl only.")
        return task

    def to_json(self) -> dict:
        return {**asdict(self), "strategies": list(self.strategies), "keep": list(self.keep), "modes": list(self.modes)}

    @classmethod
    def from_json(cls, data: dict) -> "ClassifySettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise ExplorerError(f"{what} must be comma-separated whole numbers such as 1,2,4 (got '{text}').") from exc


def check_keep(keep: tuple[int, ...], num_layers: int) -> None:
    if bad := [k for k in keep if not 1 <= k <= num_layers]:
        raise ExplorerError(f"k = {bad[0]} layers kept is out of range: this model has {num_layers} layers, keep 1 to {num_layers}.")


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


def point_accuracy(predictions: list) -> dict:
    """Accuracy and its 95% Wilson interval, computed from the (id, pred, gold) predictions."""
    from explorer.evaluation.accuracy import Accuracy

    acc = Accuracy.of(sum(pred == gold for _, pred, gold in predictions), len(predictions))
    return {"accuracy": acc.accuracy, "ci_low": acc.ci_low, "ci_high": acc.ci_high}


def classify_points(store, run_id: int) -> list[dict]:
    return [e for e in store.events(run_id) if e.get("kind") == "point"]


def _add(store, run_id: int, event: dict, on_event: OnEvent) -> None:
    store.add_event(run_id, event)
    on_event(event)


def run_classify(loaded: LoadedModel, settings: ClassifySettings, store, run_id: int,
                 on_event: OnEvent = lambda event: None, should_stop: ShouldStop = lambda: False) -> dict:
    """Every (strategy, k, mode) point as an event of `run_id`; returns the run's result.
    Two strategies that cut the same block (k = L) share one measurement."""
    from explorer.state.cache import cached_distances
    from explorer.lm.layers import pruned_view

    task = settings.check()
    config = settings.finetune_config()
    num_layers = loaded.num_layers
    check_keep(settings.keep, num_layers)
    similarity = None
    if "similarity" in settings.strategies and min(settings.keep) < num_layers:
        _add(store, run_id, {"kind": "phase", "phase": "similarity heatmap (computed once, then cached)"}, on_event)
        _, similarity, _ = cached_distances(loaded, settings.text, settings.sim_samples, settings.seq_len, settings.batch_size, store)
    sizes = {"n_train": len(task.train_examples), "n_test": len(task.examples[: settings.limit])}
    total = len(settings.keep) * len(settings.strategies) * len(settings.modes)
    _add(store, run_id, {"kind": "plan", "points": total, "num_layers": num_layers, "source": task.source, **sizes}, on_event)
    measured: dict[tuple[int, int, str], dict] = {}
    points = []
    for k in sorted(set(settings.keep)):
        for strategy in settings.strategies:
            block = strategy_block(strategy, num_layers - k, num_layers, similarity)
            for mode in settings.modes:
                if should_stop():
                    raise ClassifyCancelled(f"The run was cancelled after {len(points)} of {total} points.")
                key = (block.start, block.n, mode)
                if key not in measured:
                    _add(store, run_id, {"kind": "phase", "phase": f"{strategy} k={k}: {mode}"}, on_event)
                    measured[key] = measure(pruned_view(loaded, block), task, mode, config, settings.limit,
                                            settings.batch_size, should_stop)
                result = measured[key]
                point = {"kind": "point", "strategy": strategy, "k": k, "mode": mode, "start": block.start, "n": block.n,
                         "num_layers": num_layers, "chance": task.chance, **sizes, "steps": 0 if mode == "icl" else config.steps,
                         **point_accuracy(result["predictions"]), **result,
                         "predictions": [{"id": i, "pred": task.words[p], "gold": task.words[g]} for i, p, g in result["predictions"]]}
                points.append(point)
                _add(store, run_id, point, on_event)
    return {"task": task.name, "source": task.source, "num_layers": num_layers, **sizes, "points": points}


def describe_point(point: dict) -> str:
    return (f"{point['strategy']} k={point['k']} {point['mode']}: accuracy {point['accuracy']:.2f} "
            f"[{point['ci_low']:.2f}, {point['ci_high']:.2f}] (chance {point['chance']:.2f}; train {point['n_train']}, "
            f"test {point['n_test']}; {point['train_seconds']:.1f}s finetuning)")


def execute(store, run_id: int, on_event: OnEvent = lambda event: None, should_stop: ShouldStop = lambda: False) -> dict:
    """Load the model once and run the classify run stored as `run_id` (the job's and the CLI's body)."""
    settings = ClassifySettings.from_json(store.get_run(run_id).settings)
    settings.check()
    _add(store, run_id, {"kind": "phase", "phase": "loading the model"}, on_event)
    return run_classify(load_model(settings.model, device=settings.device), settings, store, run_id, on_event, should_stop)
