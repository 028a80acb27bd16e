"""Push an exported folder (and a GGUF beside it) to the Hugging Face hub.

Split in two so everything but the upload itself is checked here, where no hub is reachable:
`push_plan` says exactly what would go where (repo id, files, bytes) and refuses a bad repo id or a
missing file; `check_hub_ready` fails in a second, with one sentence, when the hub is switched off
(HF_HUB_OFFLINE), no token is set, or the endpoint does not answer; `push` then makes the repo and
uploads the plan's files in one commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_session, get_token

from explorer.core.errors import ExplorerError

REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
COMMIT_MESSAGE = "Upload a layer-pruned model (Layer-Pruning Explorer)"


@dataclass(frozen=True)
class PushPlan:
    """What a push uploads: `files` as (local path, path in the repo)."""

    repo_id: str
    files: tuple[tuple[str, str], ...]

    @property
    def total_bytes(self) -> int:
        return sum(Path(local).stat().st_size for local, _ in self.files)

    def describe(self) -> str:
        return (f"push {len(self.files)} files ({self.total_bytes / 2**20:.1f} MiB) to "
                f"https://huggingface.co/{self.repo_id}: {', '.join(name for _, name in self.files)}")


def check_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip()
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise ExplorerError(f"'{repo_id}' is not a Hugging Face repo id: use NAME or OWNER/NAME "
                            "(letters, digits, '-', '_', '.').")
    return repo_id


def push_plan(repo_id: str, folder: str | Path | None = None, extra: tuple[str | Path, ...] = ()) -> PushPlan:
    """Every file of the exported `folder` (its model card included) at the repo's root with the same
    relative path, and each `extra` file (a GGUF written elsewhere) at the root under its name."""
    repo_id = check_repo_id(repo_id)
    files: dict[str, str] = {}
    if folder is not None:
        root = Path(folder)
        if not (root / "README.md").is_file():
            raise ExplorerError(f"{root} has no model card (README.md): export the model again before pushing it.")
        files = {p.relative_to(root).as_posix(): str(p) for p in sorted(root.rglob("*"))
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}
    for path in map(Path, extra):
        if not path.is_file():
            raise ExplorerError(f"{path} does not exist, so it cannot be pushed.")
        if str(path) in files.values():
            continue  # already inside the folder
        if path.name in files:
            raise ExplorerError(f"{path.name} would overwrite the folder's own {path.name} in the repo: rename it.")
        files[path.name] = str(path)
    if not files:
        raise ExplorerError("Nothing to push: give an exported folder or a file.")
    return PushPlan(repo_id, tuple((local, name) for name, local in files.items()))


def check_hub_ready() -> str:
    """The token to push with, after checking in seconds that a push can work at all."""
    if constants.HF_HUB_OFFLINE:
        raise ExplorerError("The Hugging Face hub is switched off here (HF_HUB_OFFLINE=1), so nothing can be pushed: "
                            "push from a machine that is online.")
    token = get_token()
    if not token:
        raise ExplorerError("No Hugging Face token: log in with `hf auth login` or set HF_TOKEN, then push again.")
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as exc:  # connection errors come from several HTTP libraries
        raise ExplorerError(f"Cannot reach the Hugging Face hub at {constants.ENDPOINT} ({type(exc).__name__}), so nothing "
                            "can be pushed: connect and try again.") from exc
    return token


def push(plan: PushPlan, token: str) -> str:
    """Create the repo (kept if it exists) and upload the plan's files in one commit; returns its URL."""
    api = HfApi(token=token)
    try:
        url = api.create_repo(plan.repo_id, exist_ok=True, repo_type="model")
        api.create_commit(plan.repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=local)
                                         for local, name in plan.files], commit_message=COMMIT_MESSAGE)
    except Exception as exc:  # HTTP errors (no write access, a bad token) come from several libraries
        raise ExplorerError(f"The push to {plan.repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "nothing was changed on the hub unless the repo was new.") from exc
    return str(url)
