"""Keep a pruned (or healed) model: a `save_pretrained` folder that reloads with
`AutoModelForCausalLM.from_pretrained`, a JSON record of the run (run.json), and the mergekit
passthrough config that rebuilds the unhealed slice from the original checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from explorer.export.mergekit import mergekit_yaml
from explorer.lm.blocks import Block, LayerSet
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


def recorded_layers(record: dict) -> LayerSet:
    """The set a `block_record` describes (records from before layer sets hold start and n only)."""
    if "removed" not in record:
        return Block(record["start"], record["n"], record["num_layers"])
    subs = record.get("sublayers") or {}
    return LayerSet(tuple(record["removed"]), record["num_layers"], tuple(subs.get("attention", ())), tuple(subs.get("mlp", ())))


def save_model(loaded: LoadedModel, folder: str | Path, model_id: str, block: LayerSet, record: dict,
               dtype: str | None = None) -> Path:
    """The one export of a pruned, repaired or healed model: its folder with run.json (`save_pruned`)
    plus the mergekit YAML of the unhealed slice, which rebuilds the pruned starting point from the
    original checkpoint."""
    out = save_pruned(loaded, folder, record, dtype)
    (out / "mergekit.yaml").write_text(mergekit_yaml(model_id, block.num_layers, block))
    return out


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
        "metrics": {name: {k: v for k, v in m.items() if k not in ("kind", "step", "merged")} for name, m in outcome.metrics.items()},
    }


