"""What visitors of the app may do: decided by the operator when launching, never by a visitor.

On loopback (`make app`'s default, 127.0.0.1) the only user is the person at the machine, so
everything is allowed. When the server listens where other machines reach it (`make app
HOST=0.0.0.0` to serve a class, or a bare `streamlit run`, which listens on every interface),
four powers are off unless the operator switched them on with an environment variable:

- EXPLORER_ALLOW_REMOTE_CODE=1: the "Trust remote code" box is offered (a model's own Python
  would run on the server);
- EXPLORER_ALLOW_SERVER_PATHS=1: visitors may name a folder, .gguf file or text file on the
  server (else: the embedded model, Hugging Face ids, the embedded corpus, C4 and uploads);
- EXPLORER_ALLOW_DELETE=1: visitors may delete runs;
- EXPLORER_ALLOW_PUSH=1: visitors may push a pruned model to the Hugging Face hub (with the
  server's token, to any repo it can write to); without it the page does not show the button.

Pure functions of the listening address and the environment, so the rules are tested without a
server. The CLI is the operator at their own machine and is not limited.
"""

from __future__ import annotations

import ipaddress
import os
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


def check_model_source(policy: Policy, source: str) -> None:
    """Refuse a server-side model path (folder or .gguf) when paths are off; hub ids pass.
    Anything that exists on the server, or looks like a path, counts as a path."""
    source = source.strip()
    if policy.server_paths or source in MODEL_NAMES:
        return
    looks_local = source.endswith(".gguf") or source.startswith((".", "/", "~")) or "\\" in source
    if looks_local or Path(source).expanduser().exists():
        raise _refuse("models are loaded only as 'embedded' or a Hugging Face id, not from a path on it",
                      ALLOW_SERVER_PATHS)


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


def check_delete(policy: Policy) -> None:
    if not policy.delete:
        raise _refuse("visitors cannot delete runs", ALLOW_DELETE)


def check_push(policy: Policy) -> None:
    if not policy.push:
        raise _refuse("visitors cannot push models to the Hugging Face hub", ALLOW_PUSH)
