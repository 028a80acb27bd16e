"""What visitors of the app may do: decided by the operator when launching, never by a visitor.

On loopback (`make app`'s default, 127.0.0.1) the only user is the person at the machine, so
everything is allowed. When the server listens where other machines reach it (`make app
HOST=0.0.0.0` to serve a class, or a bare `streamlit run`, which listens on every interface),
four powers are off unless the operator switched them on with an environment variable:

- EXPLORER_ALLOW_REMOTE_CODE=1: the "Trust remote code" box is offered (a model's own Python
  would run on the server);
- EXPLORER_ALLOW_SERVER_PATHS=1: visitors may name a folder, .gguf file or text file on the
  server (else: the embedded model, Hugging Face ids, the embedded corpus, C4 and uploads);
- EXPLORER_ALLOW_DELETE=1: visitors may delete their own runs;
- EXPLORER_ALLOW_PUSH=1: visitors may push a pruned model to the Hugging Face hub (with the
  server's token, to any repo it can write to); without it the page does not show the button.

Visitors never reach each other either: each browser session carries a random visitor key (the
pages keep it in the address, so a reload keeps it), stored with every run the session starts
or is shown; a visitor's pages open only on their own runs, and only the visitor who started a
job may cancel it. The operator may do everything: the person at a loopback server, and the
command line (`python -m explorer cancel RUN_ID`).

Pure functions of the listening address, the environment and the visitor key, so the rules are
tested without a server. The CLI is the operator at their own machine and is not limited.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from explorer.core.errors import ExplorerError

ALLOW_REMOTE_CODE = "EXPLORER_ALLOW_REMOTE_CODE"
ALLOW_SERVER_PATHS = "EXPLORER_ALLOW_SERVER_PATHS"
ALLOW_DELETE = "EXPLORER_ALLOW_DELETE"
ALLOW_PUSH = "EXPLORER_ALLOW_PUSH"
TEXT_NAMES = ("embedded", "c4")  # text sources that are not files
MODEL_NAMES = ("embedded",)
# A Hugging Face repo id by its form alone: [namespace/]name of letters, digits, '-', '_' and '.',
# starting and ending with a letter or digit (the hub's own rule), at most 96 characters each.
_HUB_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"{_HUB_PART}(?:/{_HUB_PART})?")


@dataclass(frozen=True)
class Policy:
    """`remote`: reachable from other machines; the other fields: what visitors may do."""

    remote: bool
    remote_code: bool
    server_paths: bool
    delete: bool
    push: bool


def is_loopback(address: str | None) -> bool:
    """True only for an address no other machine can reach. Empty means every interface (Streamlit's
    default); a host name other than localhost may resolve anywhere, so it counts as reachable."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def switched_on(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def server_policy(address: str | None, env: Mapping[str, str] = os.environ) -> Policy:
    """The rules for a server listening on `address`, given the operator's environment."""
    local = is_loopback(address)
    return Policy(
        remote=not local,
        remote_code=local or switched_on(env, ALLOW_REMOTE_CODE),
        server_paths=local or switched_on(env, ALLOW_SERVER_PATHS),
        delete=local or switched_on(env, ALLOW_DELETE),
        push=local or switched_on(env, ALLOW_PUSH),
    )


def _refuse(what: str, switch: str) -> ExplorerError:
    return ExplorerError(f"This server is reachable from other machines, so {what}; "
                         f"the operator can allow it by starting the app with {switch}=1.")


def is_hub_id(source: str) -> bool:
    """Whether `source` has the form of a Hugging Face repo id (decided by the text alone)."""
    return bool(HUB_ID.fullmatch(source)) and ".." not in source and not source.endswith(".gguf")


def check_model_source(policy: Policy, source: str) -> None:
    """Refuse anything but 'embedded' or a Hugging Face id when paths are off. Decided by the text
    alone, never by the server's disk, so the message is the same whether such a path exists or
    not (a visitor cannot probe the server). `explorer.lm.models.check_hub_source` then makes sure
    a hub id never loads a folder of the same name on the server."""
    source = source.strip()
    if policy.server_paths or source in MODEL_NAMES or is_hub_id(source):
        return
    raise _refuse("models are loaded only as 'embedded' or a Hugging Face id (such as Qwen/Qwen2.5-0.5B), "
                  "not from a path on it", ALLOW_SERVER_PATHS)


def check_text_source(policy: Policy, source: str, uploads: Path) -> None:
    """Refuse a server-side text file when paths are off; the embedded corpus, C4 and files
    uploaded through the app (saved under `uploads`) pass."""
    if policy.server_paths or source.strip() in TEXT_NAMES:
        return
    path = Path(source).expanduser().resolve()
    if not path.is_relative_to(uploads.resolve()):
        raise _refuse("text comes only from the embedded corpus, C4 or an upload, not from a path on it",
                      ALLOW_SERVER_PATHS)


def check_remote_code(policy: Policy, trust_remote_code: bool) -> None:
    if trust_remote_code and not policy.remote_code:
        raise _refuse("models never run their own code on it", ALLOW_REMOTE_CODE)


def is_operator(policy: Policy) -> bool:
    """The person at a loopback server (the CLI never asks): every run is theirs."""
    return not policy.remote


def owns(policy: Policy, owner: str | None, visitor: str | None) -> bool:
    """Whether this visitor may act on a run started by `owner`: the operator always, a visitor
    only on a run their own session started (a run with no owner came from the command line)."""
    return is_operator(policy) or (owner is not None and owner == visitor)


def check_cancel(policy: Policy, owner: str | None, visitor: str | None) -> None:
    if not owns(policy, owner, visitor):
        raise ExplorerError("Only the visitor who started this run can cancel it here; the operator can cancel any run "
                            "with `python -m explorer cancel RUN_ID` on the server.")


def check_delete(policy: Policy, owner: str | None = None, visitor: str | None = None) -> None:
    if not policy.delete:
        raise _refuse("visitors cannot delete runs", ALLOW_DELETE)
    if not owns(policy, owner, visitor):
        raise ExplorerError("Visitors can delete only the runs they started; the operator can delete any run.")


def check_push(policy: Policy) -> None:
    if not policy.push:
        raise _refuse("visitors cannot push models to the Hugging Face hub", ALLOW_PUSH)
