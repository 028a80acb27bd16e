"""Phase-transition sweep: accuracy and loss against the fraction of layers dropped.

For each strategy ("similarity", "simple", "top-cut") and each block size n, the block the
strategy picks is removed from a copy of the model that shares its weights (one model load
per sweep, no weight copies), and the task accuracy (with its 95% Wilson interval) and the
held-out loss are measured; optionally each pruned model is healed for a short fixed budget
and measured again. This reproduces the
paper's Figures 1-2: accuracy holds, then collapses to chance at a sharp fraction, while the
normalized loss rises smoothly (Gromov et al., 2403.17887).

With `repair="linear"` each pruned model is also repaired without training (explorer.surgery.repair:
one fitted map folded into the layer before the block) and measured: repair is an axis, "none",
"linear" or "lora" (the heal).

Every point is an event of a "sweep" run in the store, so pages plot points live. A point is
keyed by (strategy, n, repair) (points stored before repair was an axis carry only "healed"): a sweep with the same settings and model weights reuses the
points any earlier sweep run finished (a restart after a crash or cancel resumes where it
stopped; a finished sweep becomes a cache hit). Two strategies that pick the same block for
an n (n = 0 for all of them, and often "similarity" and "simple") share one measurement.

Without healing, the unpruned model's evaluation is recorded once and each point runs only
the layers after its block (`explorer.surgery.reuse`: the layers below a block compute what they
compute unpruned). Healed points change the weights, so a healing sweep measures every
pruned model whole.
"""

from explorer.experiments.sweep.measure import (
    Executor,
    Measured,
    Shared,
    eval_config,
    linear_applies,
    load_for_sweep,
    measure_block,
    measure_linear,
    measure_locally,
    profile_parts,
    repair_config,
)
from explorer.experiments.sweep.points import (
    curve_name,
    describe_point,
    describe_verdict,
    first_at_chance,
    point_key,
    point_repair,
    repair_verdicts,
    summary,
    sweep_points,
)
from explorer.experiments.sweep.run import OnEvent, SweepCancelled, execute, run_sweep, start_sweep
from explorer.experiments.sweep.settings import REPAIR_AXIS, Key, SweepSettings, parse_fractions, teaching_preset

__all__ = [
    "Executor",
    "Key",
    "Measured",
    "OnEvent",
    "REPAIR_AXIS",
    "Shared",
    "SweepCancelled",
    "SweepSettings",
    "curve_name",
    "describe_point",
    "describe_verdict",
    "eval_config",
    "execute",
    "first_at_chance",
    "linear_applies",
    "load_for_sweep",
    "measure_block",
    "measure_linear",
    "measure_locally",
    "parse_fractions",
    "point_key",
    "point_repair",
    "profile_parts",
    "repair_verdicts",
    "repair_config",
    "run_sweep",
    "start_sweep",
    "summary",
    "sweep_points",
    "teaching_preset",
]
