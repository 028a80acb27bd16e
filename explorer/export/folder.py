"""Keep a pruned (or healed) model: a `save_pretrained` folder that reloads with
`AutoModelForCausalLM.from_pretrained`, a JSON record of the run (run.json), the mergekit
passthrough config that rebuilds the unhealed slice from the original checkpoint, and the model
card (README.md, explorer.export.card) the hub shows.
"""

from __future__ import annotations

from pathlib import Path

from explorer.export.card import CARD_FILE, model_card
from explorer.export.mergekit import mergekit_yaml
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel
from explorer.lm.save import save_pruned
from explorer.lm.sublayers import FORM


def block_record(block: LayerSet) -> dict:
    """What was removed, as run.json records it: the layers (start and n, as for a block, and every
    index), and for skipped sub-layers which ones and the form the saved weights hold them in."""
    record = {"start": block.start, "n": block.n, "num_layers": block.num_layers, "removed": list(block.removed),
              "contiguous": block.contiguous}
    if block.sublayers:
        record["sublayers"] = {"attention": list(block.attention), "mlp": list(block.mlp), "form": FORM,
                               "note": "each dropped sub-layer is saved with zero weights (its output projection "
                                       "writes zeros): stock transformers loads it and computes the same logits, "
                                       "but still runs it; only in memory is it skipped"}
    return record


def save_model(loaded: LoadedModel, folder: str | Path, model_id: str, block: LayerSet, record: dict,
               dtype: str | None = None) -> Path:
    """The one export of a pruned, repaired or healed model: its folder with run.json (`save_pruned`),
    the mergekit YAML of the unhealed slice, which rebuilds the pruned starting point from the
    original checkpoint (labelled as such when the saved weights were repaired or healed), and the
    model card made from the same record; run.json lists all of them."""
    yaml = mergekit_yaml(model_id, block.num_layers, block, changed=changes(record))
    card = model_card({"model": model_id, "block": block_record(block), **record}, Path(folder).name)
    return save_pruned(loaded, folder, record, dtype, files={"mergekit.yaml": yaml, CARD_FILE: card})


def changes(record: dict) -> str | None:
    """What the saved weights have that the mergekit slice does not: a linear repair, a LoRA heal."""
    done = []
    if (record.get("repair") or {}).get("method", "none") != "none":
        done.append("linearly repaired")
    if record.get("kind") == "heal":
        done.append("LoRA-healed")
    return " and ".join(done) or None


def save_prune(result, folder: str | Path, model_id: str, extra: dict, dtype: str | None = None) -> Path:
    """A pruned model (`prune.PruneResult`) saved with its run.json (block, parameter counts and
    `extra`) and the mergekit YAML: what the CLI's prune and the page's Save button write."""
    block, loaded = result.block, result.loaded
    record = {"kind": "prune", "model": model_id, "model_name": loaded.name, "fingerprint": loaded.fingerprint,
              "block": block_record(block), "params_before": result.params_before, "params_after": result.params_after,
              "dtype": dtype, **extra}
    return save_model(loaded, folder, model_id, block, record, dtype)


def heal_record(outcome, model_id: str, model_name: str) -> dict:
    """The run.json of a healed model (`heal.HealOutcome`), also the heal job's result."""
    return {
        "kind": "heal",
        "model": model_id,
        "model_name": model_name,
        "block": block_record(outcome.block),
        "params_before": outcome.params_before,
        "params_after": outcome.params_after,
        "heal": outcome.config.to_json(),
        "repair": outcome.repair or {"method": "none"},
        **({"self_data": outcome.self_data} if outcome.self_data else {}),
        "metrics": {name: {k: v for k, v in m.items() if k not in ("kind", "step", "merged")} for name, m in outcome.metrics.items()},
    }


