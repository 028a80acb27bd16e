"""The paper's healing recipe (Gromov et al., 2403.17887, App. A) resolved for a given model.

QLoRA with a 4-bit (nf4, bitsandbytes) base; LoRA adapters on the feed-forward modules only
(gate/up/down_proj for Llama-2 and Mistral, fc1/fc2 for Phi-2, w1/w2/c_proj for Qwen), alpha
equal to the rank, dropout 0.05; 5000 steps of global batch 16 on the C4 train split with a
cosine schedule after 100 warm-up steps; sequences of 2048 tokens for models up to 7B and
4096 from 13B; peak learning rate and rank per model from the table below. The paper
evaluates on MMLU (5-shot in its figure, 0-shot in its appendix), BoolQ 0-shot and the C4
validation loss.

A model the table names gets its row; any other model gets the Llama-2-7B row, and the
resolved recipe says which row was used and why. The FFN modules are found in the model's
own layers (the linear modules under its MLP block), so the names above come out of the
paper's families and any other architecture gets its own feed-forward projections.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

from torch import nn

from explorer.lm.layers import parameter_count
from explorer.surgery.heal import HealConfig, target_modules

STEPS = 5000
BATCH_SIZE = 16
WARMUP_STEPS = 100
DROPOUT = 0.05
SOURCE = "c4"
LARGE_FROM = 10e9  # parameters: 2048-token sequences up to 7B, 4096 from 13B
EVALUATION = "MMLU (5-shot in the paper's figure, 0-shot in its appendix), BoolQ 0-shot, C4 validation loss"
DEFAULT_ROW = "Llama-2-7B"


@dataclass(frozen=True)
class Row:
    """One line of the paper's table: the model, its peak learning rate and LoRA rank."""

    name: str
    pattern: str  # matched against the lower-cased model id or name
    lr: float
    rank: int
    large: bool  # 13B and up: 4096-token sequences

    def matches(self, model_id: str) -> bool:
        return re.search(self.pattern, model_id.lower()) is not None


TABLE = (
    Row("Llama-2-70B", r"llama-?2-?70b", 3e-5, 8, True),
    Row("Llama-2-13B", r"llama-?2-?13b", 3e-4, 64, True),
    Row("Llama-2-7B", r"llama-?2-?7b", 3e-4, 2, False),
    Row("Qwen-14B", r"qwen[^/]*?-14b", 3e-4, 64, True),
    Row("Qwen-7B", r"qwen[^/]*?-7b", 3e-4, 64, False),
    Row("Mistral-7B", r"mistral-?7b", 3e-6, 4, False),
    Row("Phi-2", r"phi-?2(?![0-9])", 2e-4, 64, False),
)


@dataclass(frozen=True)
class PaperRecipe:
    """The resolved settings, as `heal --recipe paper --dry-run` prints them."""

    targets: list[str]  # module names the adapters go on
    rank: int
    alpha: int
    dropout: float
    lr: float
    warmup_steps: int
    steps: int
    batch_size: int
    seq_len: int
    quantize: bool
    source: str
    table_row: str
    row_reason: str
    evaluation: str = EVALUATION

    def to_json(self) -> dict:
        return asdict(self)

    def heal_config(self, base: HealConfig | None = None) -> HealConfig:
        """`base` (the demo defaults when None) with the recipe's training settings; FFN targets."""
        fields = {k: v for k, v in self.to_json().items() if k in HealConfig.__dataclass_fields__}
        return replace(base or HealConfig(), **{**fields, "targets": "ffn"})


def table_row(model_id: str) -> tuple[Row, str]:
    """The table's row for this model id or name, and why it was chosen."""
    for row in TABLE:
        if row.matches(model_id):
            return row, f"the paper's row for {row.name} (matched '{model_id}')"
    default = next(row for row in TABLE if row.name == DEFAULT_ROW)
    return default, f"'{model_id}' is not in the paper's table, so its {DEFAULT_ROW} row is used"


def paper_recipe(model: nn.Module, model_id: str, parameters: int, max_positions: int | None = None) -> PaperRecipe:
    """The recipe for `model` (its modules decide the FFN targets; `parameters`, the size rule for
    the sequence length of models the table does not name). The sequence length is capped at the
    model's context (`max_positions`), which only small models hit."""
    row, reason = table_row(model_id)
    named = row.matches(model_id)
    seq_len = 4096 if (row.large if named else parameters >= LARGE_FROM) else 2048
    if max_positions:
        seq_len = min(seq_len, max_positions)
    return PaperRecipe(
        targets=target_modules(model, "ffn"), rank=row.rank, alpha=row.rank, dropout=DROPOUT, lr=row.lr,
        warmup_steps=WARMUP_STEPS, steps=STEPS, batch_size=BATCH_SIZE, seq_len=seq_len, quantize=True,
        source=SOURCE, table_row=row.name, row_reason=reason,
    )


def recipe_for(loaded_model: nn.Module, model_id: str) -> PaperRecipe:
    """`paper_recipe` for a model instance (loaded, or `models.model_skeleton` for a dry run)."""
    config = loaded_model.config.get_text_config(decoder=True)
    return paper_recipe(loaded_model, model_id, parameter_count(loaded_model),
                        getattr(config, "max_position_embeddings", None))


