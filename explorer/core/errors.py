"""One exception type for everything a user can get wrong.

The CLI and the pages catch `ExplorerError` and show its message as one sentence;
anything else is a bug and keeps its traceback.
"""


class ExplorerError(Exception):
    """A failure caused by input or environment, with a message that says what to do."""


class Cancelled(ExplorerError):
    """Work stopped because the user asked (a Cancel button, a cancelled job seen between steps);
    `Store.running` records the run as cancelled, not failed."""
