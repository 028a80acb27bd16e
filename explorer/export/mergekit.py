"""A mergekit passthrough config that rebuilds a pruned model from the original checkpoint: the
saved folder holds one machine's weights, the YAML is a few lines anyone can re-run against the
hub checkpoint (`mergekit-yaml mergekit.yaml OUT`), as in the paper's released recipes.

One slice per kept run of layers; a layer with a dropped sub-layer is a slice of its own whose
output projection is scaled by 0 (passthrough's `scale` parameter: o_proj for an attention,
down_proj for an MLP), the same zeroed form the saved folder holds (explorer.lm.sublayers).
"""

from __future__ import annotations

import json

from explorer.core.errors import ExplorerError
from explorer.lm.blocks import LayerSet
from explorer.lm.models import EMBEDDED

# The hub checkpoint the embedded GGUF was quantized from (mergekit cannot read GGUF files).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ZEROED = {"attention": "o_proj", "mlp": "down_proj"}  # the tensor whose zero silences each sub-layer


def kept_ranges(block: LayerSet) -> list[tuple[int, int]]:
    """The kept layers as half-open [a, b) ranges, mergekit's `layer_range` convention; a layer with
    a dropped sub-layer is a range of its own."""
    alone = set(block.attention) | set(block.mlp)
    ranges = []
    for a, b in block.kept_ranges:
        cuts = sorted({a, b} | {i for i in alone if a <= i < b} | {i + 1 for i in alone if a <= i < b})
        ranges += list(zip(cuts, cuts[1:]))
    return ranges


def _yaml_scalar(text: str) -> str:
    """Plain like mergekit's examples, quoted only when a path would otherwise not parse as one string."""
    plain = text and text == text.strip() and not set(text) & set(":#{}[],&*!|>'\"%@`") and text[0] not in "-?"
    return text if plain else json.dumps(text)


def mergekit_yaml(model_id: str, num_layers: int, block: LayerSet, dtype: str = "bfloat16", changed: str | None = None) -> str:
    """A mergekit `passthrough` config that stacks the kept slices of `model_id` (layout of
    mergekit's examples/orcamini-platy-44layer.yml). 'embedded' is written as its hub id.
    `changed` ("linearly repaired", "LoRA-healed") says what the model it came with has beyond the
    slice: mergekit only stacks layers, so the YAML rebuilds the UNREPAIRED pruned model, and says so."""
    if block.num_layers != num_layers:
        raise ExplorerError(f"Block is for a {block.num_layers}-layer model, not {num_layers} layers.")
    lines = [f"# Layer-Pruning Explorer: {model_id} without {block.describe()}."]
    if changed:
        lines.append(f"# NOTE: this rebuilds the pruned model WITHOUT its repair: the saved model is {changed}, and "
                     "mergekit's passthrough only stacks the original layers (use the saved folder for those weights).")
    if model_id == EMBEDDED:
        model_id = EMBEDDED_HUB_ID
        lines.append(f"# The embedded model is a GGUF of {EMBEDDED_HUB_ID}; mergekit reads the hub checkpoint.")
    lines.append("slices:")
    for a, b in kept_ranges(block):
        lines += ["  - sources:", f"    - model: {_yaml_scalar(model_id)}", f"      layer_range: [{a}, {b}]"]
        zeroed = [ZEROED[kind] for kind in ZEROED if b == a + 1 and a in getattr(block, kind)]
        if zeroed:
            lines += ["      parameters:", "        scale:"]
            lines += [f"          - filter: {name}\n            value: 0.0" for name in zeroed]
            lines += ["          - value: 1.0"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}"]
    return "\n".join(lines) + "\n"
