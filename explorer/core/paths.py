"""Where Layer-Pruning Explorer keeps its files: one folder, `EXPLORER_HOME`.

Its own module, with no torch or transformers import, so the run store, the job runner's
bookkeeping and the pages can find the folder without loading the model stack.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from explorer.core.errors import ExplorerError

# The checkout this package runs from: background processes start here so `python -m explorer`
# imports this copy of the code (a git worktree's, not another install's).
CHECKOUT = Path(__file__).resolve().parents[2]


def explorer_home() -> Path:
    """Folder for the SQLite store, the embedded-model cache, uploads, logs and exports
    (default ~/.cache/layer-pruning-explorer)."""
    home = Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "layer-pruning-explorer"))
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only file system, no permission, a file in the way
        raise ExplorerError(f"Cannot create EXPLORER_HOME {home} ({exc.strerror or exc}): set EXPLORER_HOME to a "
                            "writable folder.") from exc
    return home


def scratch_beside(target: Path) -> Path:
    """A fresh hidden name in `target`'s folder to write into and then rename over `target` (a rename
    within one folder is atomic). Unlike mkstemp's private 0600 file, a file opened there gets the
    usual permissions (the umask's), like every other file of an export."""
    return target.with_name(f".{target.name}-partial-{uuid.uuid4().hex[:12]}")
