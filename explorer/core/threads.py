"""How many CPU threads torch may use in each kind of process: the one place that decides it.

By default every torch process takes one thread per core. The app runs three kinds of process
at once (the Streamlit server, a background job runner, a CLI command), and with each taking
every core they oversubscribe the CPU: OpenMP workers spin waiting for each other, and on a
loaded 2-core machine a heal step ran many times slower than the load alone explains. So:

- "server": a quarter of the cores (at least 1); it draws pages and computes the quick previews,
- "runner": the rest (at least 1); it does the long heavy work (healing, sweeps),
- "cli": every core; a foreground command is the one thing the user is waiting for.

EXPLORER_TORCH_THREADS=N overrides the policy for every process that reads it (for example on
a machine shared with other work); OMP_NUM_THREADS, when set, is respected the same way.
"""

from __future__ import annotations

import os

import torch

ENV = "EXPLORER_TORCH_THREADS"
ROLES = ("server", "runner", "cli")


def cores() -> int:
    """CPUs this process may run on (the affinity mask, e.g. a container's limit), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def threads_for(role: str, available: int | None = None, environ: dict | None = None) -> int:
    """The torch thread count of a process of this role (see the module docstring)."""
    if role not in ROLES:
        raise ValueError(f"Unknown process role '{role}': choose one of {', '.join(ROLES)}.")
    environ = os.environ if environ is None else environ
    for name in (ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    available = available or cores()
    server = max(1, available // 4)
    return {"server": server, "runner": max(1, available - server), "cli": available}[role]


def configure(role: str) -> int:
    """Set torch's intra-op thread count for this process's role; returns it."""
    count = threads_for(role)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
