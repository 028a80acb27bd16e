"""Writing a result file safely: whole or not at all.

Every JSON (and text) file the CLI and the exports write goes through `write_text` / `write_json`:
the data goes to a temporary file beside the target, which replaces the target only once it is
complete, so a full disk, a read-only folder or a crash leaves the old file (or none), never a
half-written or 0-byte one, and the failure is one sentence naming the cause.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path

from explorer.core.errors import ExplorerError

FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # the disk (or a quota, or a file-size limit) refuses more bytes


def write_failure(path: Path | str, exc: OSError) -> ExplorerError:
    """One sentence for a write the system refused, naming the real cause."""
    if exc.errno in FULL:
        cause = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "the folder is read-only"
    else:
        cause = exc.strerror or str(exc)
    return ExplorerError(f"Could not write {path} ({cause}); nothing was written there: free some space or choose "
                         "another place.")


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename); returns the path."""
    path = Path(path).expanduser()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        with open(temporary, "x", encoding="utf-8") as out:  # "x": a new file, with the usual permissions
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        raise write_failure(path, exc) from exc
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
    return path


def write_json(path: Path | str, data, indent: int = 1) -> Path:
    """`write_text` of `data` as JSON (values JSON cannot hold are written as their text)."""
    return write_text(path, json.dumps(data, indent=indent, default=str))
