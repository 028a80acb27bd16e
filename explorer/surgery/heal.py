"""Heal a pruned model with (Q)LoRA, reporting every step, then merge the adapter.

The paper (Gromov et al. 2403.17887, Sec. 4 and App. A) heals each pruned model with QLoRA
(a 4-bit nf4 base, bitsandbytes) and LoRA adapters on the feed-forward modules only, trained
with a next-token loss on C4; `explorer.surgery.recipe` holds its full recipe (alpha = rank, dropout
0.05, 5000 steps of batch 16, 100 warm-up steps then cosine, its per-model learning rates and
ranks) and resolves it for a given model. `HealConfig.targets` chooses the adapters' modules:
"ffn" (the paper), "all-linear" (every projection of attention and MLP, the demo default), or
"last-layers": FULL fine-tuning, no adapters, of the last `last_layers` decoder layers and the
LM head, as "Reassessing Layer Pruning in LLMs" (Lu et al., ICLR 2026, arXiv 2411.15558) heals. On a
model with tied embeddings (the embedded SmolLM2) the LM head IS the input embedding matrix:
training it trains both, and the healed model stays tied (it saves as a stock model).
`HealConfig.objective` chooses what the model learns (next-token NLL, or distillation from the
unpruned model) and `HealConfig.data` on what text: explorer.surgery.distill.
`HealConfig`'s other defaults are demo-sized too (rank 8, 40 steps of 4 x 128 tokens) so one
heal of the 30-layer embedded model finishes in a few minutes on a 2-core CPU.

QLoRA is the default on CUDA. On CPU the default is fp32 LoRA, but `quantize=True` works
there too (bitsandbytes >= 0.49 trains nf4 on CPU), which is how the tests check that path.

Memory: training runs on `weight_sharing_copy(pruned model)`, new module objects over the SAME
weight storage, so a heal holds one copy of the model's weights plus the adapters (or the
last-layers clones) and their optimizer state; the distillation teacher runs on that same storage.

Merging: with plain LoRA peft's safe merge writes W + BA into a NEW tensor per adapted module
(never into the shared storage, which the caller's model still uses); the healed model shares
every weight no adapter touched with `loaded_pruned`. With QLoRA the adapter was trained against
nf4-rounded base weights; we merge it the same way into a weight-sharing copy of the
full-precision pruned weights (the weights nf4 was made from), so the healed model is not rounded
to 4 bits a second time. A model that was already loaded in 4-bit has no full-precision copy: it
trains in place and peft merges into its dequantized weights and re-quantizes them. A last-layers
heal needs no merge: its model, trained clones and all, is the healed model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from explorer.core.errors import Cancelled, ExplorerError
from explorer.core.options import SHARED, setting
from explorer.evaluation.agreement import agreement
from explorer.evaluation.evaluate import EvalSettings, Evaluated, check_generation_task, quick_eval
from explorer.evaluation.tasks import default_eval_task, get_task
from explorer.lm.blocks import Block, check_block
from explorer.lm.data import EMBEDDED, batches, make_samples, pad_batch
from explorer.lm.layers import decoder_layers, layers_path, weight_sharing_copy
from explorer.lm.models import LoadedModel, load_model
from explorer.lm.save import save_pruned
from explorer.surgery.distill import DATA, OBJECTIVES, HealLoss, SelfData, generate_self_data
from explorer.surgery.parallel import Ranks
from explorer.surgery.repair import prune_or_repair, repair_record

Event = dict
OnEvent = Callable[[Event], None]
ShouldStop = Callable[[], bool]

LAST_LAYERS = "last-layers"
TARGETS = ("all-linear", "ffn", LAST_LAYERS)
FFN_BLOCKS = ("mlp", "feed_forward", "ffn")  # a decoder layer's feed-forward block, by family
FFN_ON_LAYER = ("fc1", "fc2")  # OPT-style layers hold their feed-forward projections directly


@dataclass
class HealConfig:
    """One healing run. Defaults are a CPU demo; `explorer.surgery.recipe` resolves the paper's values."""

    rank: int = setting(8, "LoRA rank (the paper: 2 to 64 by model)", label="LoRA rank")
    alpha: int = setting(16, "LoRA alpha, the adapter's scale (the paper: the rank)", label="LoRA alpha")
    dropout: float = setting(0.05, "LoRA dropout (the paper: 0.05)", label="LoRA dropout")
    lr: float = setting(3e-4, "peak learning rate: linear warm-up, then cosine decay to zero (the paper's schedule shape)",
                        label="Learning rate")
    warmup_steps: int = setting(4, "steps of linear warm-up (the paper: 100)", label="Warm-up steps")
    steps: int = setting(40, "training steps", label="Steps")
    batch_size: int = setting(4, "training documents per step", label="Batch size")
    seq_len: int = setting(128, "tokens per training document", label="Tokens per sample")
    train_samples: int | None = setting(None, "distinct training documents (default: steps x batch size, no repeats)",
                                        label="Training documents")
    quantize: bool | None = setting(None, "QLoRA: train on a 4-bit nf4 copy of the base with bf16 compute (bitsandbytes), "
                                    "as the paper does (default: on with CUDA, off on CPU)", flag="--qlora", label="QLoRA (nf4 base)")
    source: str = setting(EMBEDDED, "healing text: 'embedded', 'c4' or a .txt/.jsonl/.parquet file; training reads its "
                          "train split, the loss its held-out documents", flag="--text-file", label="Healing text")
    eval_every: int = setting(10, "training steps between evaluations", label="Evaluate every (steps)")
    eval_task: str | None = setting(None, "task scored during healing (default: a knowledge quiz)",
                                    label="Accuracy task")
    eval_limit: int = setting(32, "questions per evaluation", label="Questions per evaluation")
    eval_options: dict = setting(help="the evaluation task's options (the task options --mmlu-dir, --subjects, --shots, "
                                 "--split, --option)", factory=dict, cli=SHARED)
    gen_task: str | None = setting(None, "a generation task scored beside the accuracy task at every evaluation, e.g. "
                                   "quiz-capitals-gen (default: none)", label="Generation task")
    gen_limit: int = setting(32, "questions of the generation task per evaluation", label="Generation questions")
    val_samples: int = setting(16, "held-out documents for the validation loss", label="Held-out samples (loss)")
    eval_batch_size: int = setting(8, "questions and documents per evaluation batch", label="Evaluation batch size")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory for big models, "
                                           "more compute", label="Gradient checkpointing")
    seed: int = setting(0, "seed of the adapters' initialisation and the training order", label="Seed")
    targets: str = setting("all-linear", "what trains: LoRA on every linear projection of the layers, LoRA on the "
                           "feed-forward ones only (the paper's choice), or last-layers: full fine-tuning of the last "
                           "K layers and the LM head, no LoRA (Reassessing Layer Pruning, ICLR 2026)", choices=TARGETS,
                           label="Train")
    last_layers: int = setting(3, "K, the decoder layers trained with targets last-layers (the last K of the pruned "
                               "model, with the LM head)", label="Last layers trained (K)")
    objective: str = setting("nll", "nll: next-token loss on the text (the paper); kl: KL(unpruned || pruned) over the "
                             "whole vocabulary at every position, distilling from the unpruned model; nll+kl: a mix",
                             choices=OBJECTIVES, label="Objective")
    temperature: float = setting(1.0, "distillation temperature T: both distributions are softmax(logits / T) and the "
                                 "KL is scaled by T² so the gradient keeps its size", label="Temperature (kl)")
    kl_weight: float = setting(0.5, "w in nll+kl: loss = (1 - w) NLL + w KL", label="KL weight (nll+kl)")
    data: str = setting("text", "text: train on the healing text; self: on the unpruned model's own greedy "
                        "continuations of the text's first tokens (self-data distillation, generated once and "
                        "kept in the store)", choices=DATA, label="Training data")
    prompt_tokens: int = setting(32, "tokens of each training document the unpruned model continues (data self)",
                                 label="Prompt tokens (self data)")

    def check(self) -> None:
        """Reject impossible values and unknown tasks before any model loads."""
        minimums = {  # name: (value, the least it may be)
            "rank": (self.rank, 1), "LoRA alpha": (self.alpha, 1), "steps": (self.steps, 1),
            "batch size": (self.batch_size, 1), "sequence length": (self.seq_len, 2),
            "evaluation interval": (self.eval_every, 1), "validation samples": (self.val_samples, 1),
            "evaluation question limit": (self.eval_limit, 1),
            "training samples": (1 if self.train_samples is None else self.train_samples, 1),
            "last layers": (self.last_layers, 1), "prompt tokens": (self.prompt_tokens, 1),
            "generation question limit": (self.gen_limit, 1),
        }
        if bad := [f"{name} must be at least {least} (got {value})" for name, (value, least) in minimums.items()
                   if value < least]:
            raise ExplorerError(f"Invalid healing settings: {'; '.join(bad)}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ExplorerError(f"Learning rate must be a positive number (got {self.lr}).")
        if not 0 <= self.dropout < 1:
            raise ExplorerError(f"LoRA dropout must be in [0, 1) (got {self.dropout}).")
        if self.targets not in TARGETS:
            raise ExplorerError(f"Unknown training targets '{self.targets}': choose {', '.join(TARGETS)}.")
        if self.targets == LAST_LAYERS and self.quantize:
            raise ExplorerError("QLoRA trains adapters on a 4-bit base; last-layers fine-tunes full-precision layers: "
                                "turn QLoRA off or choose LoRA targets.")
        if self.objective not in OBJECTIVES:
            raise ExplorerError(f"Unknown healing objective '{self.objective}': choose {', '.join(OBJECTIVES)}.")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ExplorerError(f"The distillation temperature must be a positive number (got {self.temperature}).")
        if not 0 <= self.kl_weight <= 1:
            raise ExplorerError(f"The KL weight must be in [0, 1] (got {self.kl_weight}).")
        if self.data not in DATA:
            raise ExplorerError(f"Unknown training data '{self.data}': choose {' or '.join(DATA)}.")
        if self.data == "self" and self.prompt_tokens >= self.seq_len:
            raise ExplorerError(f"Self data needs prompts shorter than the sequence length ({self.seq_len} tokens) "
                                f"to leave room for the continuation (got {self.prompt_tokens} prompt tokens).")
        get_task(self.eval_task or default_eval_task(), **self.eval_options)
        check_generation_task(self.gen_task, self.eval_options)

    def evaluation(self) -> EvalSettings:
        """The settings of every evaluation of this heal (checked): held-out loss, task accuracy and
        the generation task's, if any."""
        self.check()
        return EvalSettings(self.source, self.val_samples, self.seq_len, self.eval_task or default_eval_task(),
                            self.eval_limit, dict(self.eval_options), self.eval_batch_size, self.gen_task, self.gen_limit)

    def resolved(self, device: torch.device | str) -> "HealConfig":
        """Checked, with the device-dependent defaults filled in (QLoRA on CUDA, the default task)."""
        self.check()
        quantize = self.quantize if self.quantize is not None else torch.device(device).type == "cuda" and self.lora
        return replace(self, quantize=quantize, eval_task=self.eval_task or default_eval_task())

    @property
    def lora(self) -> bool:
        """Whether this heal trains LoRA adapters (else full fine-tuning of the last layers)."""
        return self.targets != LAST_LAYERS

    @property
    def needs_teacher(self) -> bool:
        """Whether the heal needs the unpruned model while it trains (a KL term) or before (self data)."""
        return self.objective != "nll" or self.data == "self"

    def loss(self, teacher: nn.Module | None = None) -> HealLoss:
        """The loss of each training step, distilling from `teacher` (the unpruned model's module) when the objective asks."""
        return HealLoss(self.objective, self.temperature, self.kl_weight, teacher)

    def to_json(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A short stable digest of the settings (identifies the healed weights)."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_heal_size(n: int) -> None:
    """A heal removes a block first: n = 0 would fine-tune the unpruned model, which only the sweep's
    baseline point does on purpose; a user asking heal for it has mistyped."""
    if n < 1:
        raise ExplorerError(f"Healing removes a block of layers first: the block size n must be at least 1 (got {n}); "
                            "the sweep's n = 0 point fine-tunes the unpruned model as its baseline.")


class HealCancelled(Cancelled):
    """The user stopped the run; not a failure."""


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the linear projections inside the decoder layers (q_proj ... down_proj for llama).

    Found from the modules, not a per-family table, so any architecture the loader supports
    heals; the embeddings and LM head are outside the layers and stay frozen, as in the paper.
    """
    names = {
        name.rsplit(".", 1)[-1]
        for layer in decoder_layers(model)
        for name, module in layer.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }
    if not names:
        raise ExplorerError("The model's decoder layers have no linear projections to attach LoRA adapters to.")
    return sorted(names)


def ffn_targets(model: nn.Module) -> list[str]:
    """The feed-forward projections of the decoder layers, as paths inside a layer that peft
    matches by suffix: mlp.gate_proj/up_proj/down_proj (Llama, Mistral), mlp.fc1/fc2 (Phi-2),
    mlp.w1/w2/c_proj (Qwen; "mlp." keeps attention's own c_proj out), fc1/fc2 (OPT)."""
    names = {
        name
        for layer in decoder_layers(model)
        for name, module in layer.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
        and (name.split(".")[0] in FFN_BLOCKS or name in FFN_ON_LAYER)
    }
    if not names:
        raise ExplorerError("Found no feed-forward projections in the model's layers: use all-linear LoRA targets.")
    return sorted(names)


def target_modules(model: nn.Module, targets: str, last_layers: int = 3) -> list[str]:
    """The modules that train for a `HealConfig.targets` choice: LoRA's (matched by suffix inside
    the layers) or, for last-layers, the full paths of the last `last_layers` layers and the head."""
    if targets == LAST_LAYERS:
        return last_layer_modules(model, last_layers)
    return ffn_targets(model) if targets == "ffn" else lora_targets(model)


def last_layer_modules(model: nn.Module, count: int) -> list[str]:
    """Paths of the last `count` decoder layers and of the LM head, e.g. model.layers.25 ... lm_head."""
    path, layers = layers_path(model), decoder_layers(model)
    if not 1 <= count <= len(layers):
        raise ExplorerError(f"Cannot train the last {count} layers of a model with {len(layers)} (after pruning): "
                            f"choose K from 1 to {len(layers)}.")
    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if module is head]
    if not names:
        raise ExplorerError("The model has no output embedding (LM head) to train.")
    return [f"{path}.{index}" for index in range(len(layers) - count, len(layers))] + names[:1]


def lora_config(model: nn.Module, config: HealConfig):
    from peft import LoraConfig  # deferred: peft loads only when healing or finetuning

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_modules(model, config.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _nf4_copy(loaded: LoadedModel) -> nn.Module:
    """The pruned weights quantized to nf4: saved and reloaded through transformers' bitsandbytes
    path, the same quantization `from_pretrained(..., load_in_4bit)` gives any checkpoint."""
    with tempfile.TemporaryDirectory(prefix="explorer-qlora-") as folder:
        save_pruned(loaded, folder, {"kind": "qlora-base"})
        return load_model(folder, device=str(loaded.device), load_in_4bit=True).model


def _keep_4bit_differentiable(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    bitsandbytes 0.50 repacks a Linear4bit's weights in place the first time it runs in eval
    mode without gradients (our periodic evaluations), and from then on uses a kernel that has
    no backward: training after an evaluation would silently drop the gradient through every
    base projection (torch only warns that no autograd kernel is registered). Opting out keeps
    the differentiable path; evaluation uses the plain 4-bit kernel instead."""
    import bitsandbytes as bnb  # deferred: bitsandbytes loads only for 4-bit (QLoRA) models

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def training_model(loaded: LoadedModel, config: HealConfig):
    """The model that trains: a peft model with fresh adapters on a weight-sharing copy of the pruned
    model (an nf4 copy when quantizing; the model itself when it was loaded in 4-bit), or for
    last-layers a weight-sharing copy whose trained modules are private clones."""
    from peft import get_peft_model, prepare_model_for_kbit_training  # deferred: peft loads only when healing or finetuning

    if not config.lora:
        return last_layers_model(loaded, config)
    if is_quantized(loaded.model):
        base = loaded.model
    elif config.quantize:
        base = _nf4_copy(loaded)
    else:
        base = weight_sharing_copy(loaded.model)
    if is_quantized(base):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.gradient_checkpointing)
        _keep_4bit_differentiable(base)
    elif config.gradient_checkpointing:
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    base.config.use_cache = False
    torch.manual_seed(config.seed)
    return get_peft_model(base, lora_config(base, config))


def last_layers_model(loaded: LoadedModel, config: HealConfig) -> nn.Module:
    """A weight-sharing copy of the pruned model in which only the last `last_layers` layers and the
    LM head train, fully (no adapters): their parameters are replaced by trainable clones (every
    module holding one, so a head tied to the input embedding stays tied), the rest stays frozen
    and shared with `loaded`, which training therefore never changes."""
    if is_quantized(loaded.model):
        raise ExplorerError("Full fine-tuning of the last layers needs full-precision weights: load the model without 4-bit.")
    model = weight_sharing_copy(loaded.model)
    trained = {id(p): p for name in last_layer_modules(model, config.last_layers) for p in model.get_submodule(name).parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    clones = {key: nn.Parameter(p.detach().clone(), requires_grad=True) for key, p in trained.items()}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in clones:
                module._parameters[name] = clones[id(p)]
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def is_peft(model: nn.Module) -> bool:
    """Whether `model` trains adapters (a peft model) rather than its own weights."""
    return hasattr(model, "get_base_model")


def merge(peft_model, loaded: LoadedModel) -> nn.Module:
    """The healed model: the adapter merged into full-precision pruned weights when we have them.
    peft's safe merge writes each merged weight to a new tensor, so the storage the training
    model shares with `loaded` is never written (see the module doc). A last-layers model is
    already the healed model."""
    from peft import get_peft_model  # deferred: peft loads only when healing or finetuning
    from peft.utils import (  # deferred: peft loads only when healing or finetuning
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    if not is_peft(peft_model):
        merged = peft_model
        merged.requires_grad_(False)
    elif is_quantized(loaded.model):
        merged = peft_model.merge_and_unload()
    elif not is_quantized(peft_model.get_base_model()):
        merged = peft_model.merge_and_unload(safe_merge=True)
    else:
        target = weight_sharing_copy(loaded.model)
        adapter = replace(peft_model.peft_config["default"], base_model_name_or_path=target.config.name_or_path)
        fresh = get_peft_model(target, adapter)
        set_peft_model_state_dict(fresh, get_peft_model_state_dict(peft_model, save_embedding_layers=False))
        merged = fresh.merge_and_unload(safe_merge=True)
    merged.config.use_cache = True
    return merged.eval()


def lr_at(step: int, config: HealConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `steps`."""
    warmup = min(config.warmup_steps, config.steps - 1)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def training_documents(tokenizer, config: HealConfig) -> list[list[int]]:
    """The distinct training documents of the source's train split (`train_samples`, default
    steps x batch size): the text an nll heal reads and the prompts self data starts from."""
    return make_samples(tokenizer, config.source, config.train_samples or config.steps * config.batch_size,
                        config.seq_len, "train").ids


def self_data(teacher: LoadedModel, config: HealConfig) -> SelfData:
    """The unpruned model's greedy continuations of the training documents' first `prompt_tokens`
    tokens, up to `seq_len` tokens each (explorer.surgery.distill); state.cache keeps them in the store."""
    return generate_self_data(teacher, training_documents(teacher.tokenizer, config), config.prompt_tokens,
                              config.seq_len, config.eval_batch_size)


def training_batches(loaded: LoadedModel, config: HealConfig, data: SelfData | None = None,
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`steps` batches of (input_ids, attention_mask, labels) from the source's train split (or
    from `data`, self data, whose prompts get no labels: the loss is on the continuations),
    shuffled with the seed and cycled when there are fewer documents than steps x batch."""
    if data is None:
        documents = [(ids, 0) for ids in training_documents(loaded.tokenizer, config)]
    else:
        documents = list(zip(data.documents, data.prompt_lengths))
    order: list[tuple[list[int], int]] = []
    rng = random.Random(config.seed)
    while len(order) < config.steps * config.batch_size:
        epoch = list(documents)
        rng.shuffle(epoch)
        order += epoch
    pad_id = loaded.tokenizer.pad_token_id or 0
    out = []
    for chunk in list(batches(order, config.batch_size))[: config.steps]:
        input_ids, mask = pad_batch([ids for ids, _ in chunk], pad_id)
        labels = input_ids.masked_fill(mask == 0, -100)
        for row, (_, prompt) in enumerate(chunk):
            labels[row, :prompt] = -100
        out.append((input_ids, mask, labels))
    return out


def _evaluate_adapter(peft_model, loaded: LoadedModel, config: HealConfig) -> dict:
    """quick_eval of the model with its live adapter; the scorers switch dropout off and back."""
    model = peft_model.get_base_model() if is_peft(peft_model) else peft_model
    return quick_eval(LoadedModel(model, loaded.tokenizer, loaded.name, loaded.fingerprint), config)


def optimizer_step(
    optimizer,
    compute_loss: Callable[[], torch.Tensor],
    lr: float,
    step: int,
    out_of_memory: str,
    weight: float = 1.0,
    ranks: Ranks | None = None,
) -> float:
    """One update of `compute_loss()` at learning rate `lr` (times a group's "lr_scale", default 1);
    returns the loss. Data-parallel (`ranks`), the loss is scaled by this rank's `weight` before the
    backward and the value returned is the global batch's, all ranks agreeing (explorer.surgery.parallel says
    why that gives the single-process gradient). NaN/inf and out-of-memory (`out_of_memory`: what to
    change) become ExplorerErrors."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    try:
        loss = compute_loss()
        value = loss.item() if ranks is None else ranks.total(loss.item() * weight / ranks.size)
        if not math.isfinite(value):
            raise ExplorerError(f"The training loss became {value} at step {step}: lower the learning rate (was {lr:.2g}) and retry.")
        (loss if ranks is None else loss * weight).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError as exc:
        raise ExplorerError(out_of_memory) from exc
    return value


def train_step(peft_model, optimizer, batch, lr: float, step: int, device: torch.device, ranks: Ranks | None = None,
               loss: HealLoss = HealLoss()) -> float:
    """One AdamW update of the heal on `loss` (default: the NLL); returns the loss. With `ranks` this
    rank trains on its share, its NLL weighed by its label tokens and its KL by its real tokens (each
    term's own normaliser, explorer.surgery.parallel), so the step equals one process's on the whole batch."""
    nll_scale = kl_scale = 1.0
    if ranks is not None:
        mine, nll_scale = ranks.share(batch)
        kl_scale = ranks.size * int(mine[1].sum()) / int(batch[1].sum())
        batch = mine
    input_ids, mask, labels = (t.to(device) for t in batch)
    return optimizer_step(
        optimizer, lambda: loss(peft_model, input_ids, mask, labels, nll_scale, kl_scale), lr, step,
        f"Out of memory while healing with batch size {input_ids.shape[0]} x {input_ids.shape[1]} tokens: "
        "use a smaller batch or sequence length, or 4-bit (QLoRA).", 1.0, ranks,
    )


def train_adapter(
    peft_model,
    data: list,
    config: HealConfig,
    on_event: OnEvent = lambda event: None,
    should_stop: ShouldStop = lambda: False,
    evaluate: Callable[[int], None] | None = None,
    ranks: Ranks | None = None,
    loss: HealLoss = HealLoss(),
) -> None:
    """AdamW on `loss` over `data` with the warm-up/cosine schedule, one "train" event per step, and
    `evaluate(step)` every `eval_every` steps before the last (the merged model is evaluated
    instead). `tokens_per_s` counts real (unpadded) tokens of the global batch over training
    time only. With `ranks`, every rank calls this with the same global batches and trains on
    its share under DDP (the caller makes on_event and evaluate main-process-only)."""
    device = peft_model.get_input_embeddings().weight.device
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    peft_model.train()
    trained = peft_model if ranks is None else ranks.wrap(peft_model)
    tokens, training_s = 0, 0.0
    for step, batch in enumerate(data, 1):
        if should_stop():
            raise HealCancelled(f"Healing was cancelled after {step - 1} of {config.steps} steps.")
        lr = lr_at(step - 1, config)
        started = time.perf_counter()
        value = train_step(trained, optimizer, batch, lr, step, device, ranks, loss)
        training_s += time.perf_counter() - started
        tokens += int(batch[1].sum())
        on_event({"kind": "train", "step": step, "train_loss": value, "lr": lr, "tokens": tokens, "tokens_per_s": tokens / training_s})
        if evaluate and step % config.eval_every == 0 and step < config.steps:
            evaluate(step)


@dataclass
class HealResult:
    """What `heal` produced: the merged model and the two evaluations callers keep (the "eval"
    events of the pruned model at step 0 and of the merged model; None off the main process)."""

    healed: LoadedModel
    after_pruning: Event | None
    after_healing: Event | None
    steps: int  # training steps done (all of them: a stopped heal raises HealCancelled)
    self_data: SelfData | None = None  # the unpruned model's text it trained on (data "self")


def heal(
    loaded_pruned: LoadedModel,
    config: HealConfig,
    on_event: OnEvent = lambda event: None,
    should_stop: ShouldStop = lambda: False,
    ranks: Ranks | None = None,
    teacher: LoadedModel | None = None,
    data: SelfData | None = None,
) -> HealResult:
    """Train LoRA adapters (or the last layers) on the pruned model and return the merged, healed
    model with its evaluations before and after healing.

    `teacher`: the unpruned model, which a kl objective distills from and self data is generated
    by; it should be the model `loaded_pruned` shares its weights with (a `pruned_view` of it, or
    it pruned in place after keeping the removed layers), so that the two hold one copy. `data`:
    self data made beforehand (e.g. kept in the store); made here from `teacher` when missing.

    Events (each a dict with "kind" and "step"): "eval" at step 0 (after pruning, before
    healing) and every `eval_every` steps; "train" after every update (train_loss, lr,
    cumulative real tokens); a last "eval" with "merged": True for the merged model at
    `steps`. `loaded_pruned` itself is left untouched (unless it was loaded in 4-bit).
    Raises HealCancelled when `should_stop()` turns true.

    With `ranks` (data-parallel, explorer.surgery.parallel) every rank trains its share of each batch;
    events and evaluations happen on the main process only, the others wait for it.
    """
    config = config.resolved(loaded_pruned.device)
    if teacher is None and (config.objective != "nll" or (config.data == "self" and data is None)):
        raise ExplorerError(f"Healing with objective {config.objective} and {config.data} data needs the unpruned model "
                            "as the teacher.")
    on_event, should_stop, main = _main_only(on_event, should_stop, ranks, config)
    if config.data == "self" and data is None:
        on_event({"kind": "phase", "step": 0, "phase": "generating the unpruned model's own text (self data)"})
        data = self_data(teacher, config)
    train_data = training_batches(loaded_pruned, config, data if config.data == "self" else None)  # empty text fails before training
    preparing = "preparing adapters" + (" on the nf4 base (QLoRA)" if config.quantize else "") if config.lora else \
        f"preparing the last {config.last_layers} layers and the LM head"
    on_event({"kind": "phase", "step": 0, "phase": preparing})
    peft_model = training_model(loaded_pruned, config)
    evaluations: dict[int, Event] = {}

    def evaluate(step: int) -> None:
        if main:
            on_event({"kind": "phase", "step": step, "phase": f"evaluating at step {step}" if step else "evaluating the pruned model"})
            evaluations[step] = {"kind": "eval", "step": step, **_evaluate_adapter(peft_model, loaded_pruned, config)}
            on_event(evaluations[step])
            if step:
                on_event({"kind": "phase", "step": step, "phase": "training"})
        if ranks is not None:
            ranks.wait()

    evaluate(0)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    on_event({"kind": "phase", "step": 0, "phase": "training", "trainable_params": trainable})
    train_adapter(peft_model, train_data, config, on_event, should_stop, evaluate, ranks,
                  config.loss(teacher.model if teacher is not None else None))
    on_event({"kind": "phase", "step": config.steps, "phase": "merging the adapter" if config.lora else "finishing"})
    healed = LoadedModel(
        merge(peft_model, loaded_pruned),
        loaded_pruned.tokenizer,
        f"{loaded_pruned.name} (healed)",
        f"{loaded_pruned.fingerprint}|healed:{config.key()}",
    )
    merged = None
    if main:
        on_event({"kind": "phase", "step": config.steps, "phase": "evaluating the healed model"})
        merged = {"kind": "eval", "step": config.steps, "merged": True, **quick_eval(healed, config)}
        on_event(merged)
    return HealResult(healed, evaluations.get(0), merged, config.steps, data if config.data == "self" else None)


def _main_only(on_event: OnEvent, should_stop: ShouldStop, ranks: Ranks | None, config: HealConfig) -> tuple[OnEvent, ShouldStop, bool]:
    """on_event as given on the main process and silent on the others; should_stop agreed by all
    ranks (any rank's stop stops every rank, so none waits forever in a collective); whether
    this process is the main one. Without ranks: the callbacks unchanged."""
    if ranks is None:
        return on_event, should_stop, True
    ranks.check_batch(config.batch_size)
    return (on_event if ranks.is_main else lambda event: None), lambda: ranks.any(should_stop()), ranks.is_main


@dataclass
class HealOutcome:
    """What a prune-and-heal run produced; `metrics` holds the three quick_eval snapshots."""
    healed: LoadedModel
    config: HealConfig  # resolved: quantize and eval_task filled in
    block: Block
    params_before: int
    params_after: int
    metrics: dict  # {"before_pruning": {...}, "after_pruning": {...}, "healed": {...}}
    repair: dict | None = None  # repair.repair_record when a linear repair ran before healing
    self_data: dict | None = None  # distill.SelfData.summary() when it trained on self data


def prune_and_heal(
    loaded: LoadedModel,
    start: int,
    n: int,
    config: HealConfig,
    on_event: OnEvent = lambda event: None,
    should_stop: ShouldStop = lambda: False,
    allow_final: bool = False,
    reference: Callable[[LoadedModel, Evaluated], dict] = quick_eval,
    ranks: Ranks | None = None,
    repair=None,
    make_self_data: Callable[[LoadedModel, HealConfig], SelfData] = self_data,
) -> HealOutcome:
    """The whole run behind the job and the CLI: evaluate the unpruned model with `reference`
    (the "before pruning" event; the job passes `cache.cached_quick_eval` on its store), prune
    [start, start+n) IN PLACE (the caller's own copy; saves a model's worth of memory), heal,
    and collect the metrics. With `ranks` only the main process evaluates and reports (heal's
    data-parallel rules).

    Self data is made from the unpruned model first (`make_self_data`: the job passes the store's
    cached version). A kl objective keeps the unpruned model whole as the teacher and heals a
    `pruned_view` of it (the linear repair folded into a private copy of its one weight): the
    student and the teacher then share every weight, and the removed layers, which an nll heal
    frees by pruning in place, are all the memory the teacher adds."""
    config = config.resolved(loaded.device)
    block = check_block(start, n, loaded.num_layers, allow_final)
    before: Event = {}

    def record(event: Event) -> None:
        if event["kind"] == "eval":
            event.update(agreement(event.get("predictions"), before.get("predictions")))
        on_event(event)

    emit, agreed_stop, main = _main_only(on_event, should_stop, ranks, config)
    emit({"kind": "phase", "step": 0, "phase": "evaluating the unpruned model"})
    if main:
        before.update({"kind": "reference", "step": 0, **reference(loaded, config)})
        on_event(before)
    if agreed_stop():
        raise HealCancelled("Healing was cancelled before pruning.")
    data = None
    if config.data == "self":
        emit({"kind": "phase", "step": 0, "phase": "generating the unpruned model's own text (self data)"})
        data = make_self_data(loaded, config)
    if repair is not None:  # fold the linear map first, heal from there
        emit({"kind": "phase", "step": 0, "phase": "fitting the linear repair"})
    distilling = config.objective != "nll"
    pruned, fit = prune_or_repair(loaded, block, repair, inplace=not distilling, share=distilling)
    repaired = repair_record(repair, fit) if repair is not None else None
    result = heal(pruned.loaded, config, record, should_stop, ranks, loaded if distilling else None, data)
    metrics = {"before_pruning": before, "after_pruning": result.after_pruning, "healed": result.after_healing} if main else {}
    return HealOutcome(result.healed, config, pruned.block, pruned.params_before, pruned.params_after, metrics, repaired,
                       data.summary() if data is not None else None)


