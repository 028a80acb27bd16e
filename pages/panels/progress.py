"""A progress bar for work that runs in the page's own script thread (a heatmap, a metric pass, the
Prune comparison, a brute force) and must finish whatever the browser does meanwhile.

Streamlit stops a script thread by raising StopException (the tab was closed) or RerunException
(the user clicked again, e.g. a double click on Run) from the next Streamlit call it makes, which
here is the bar's update inside the computation: the run was then recorded as "failed:
StopException" and the work lost. `steady_progress` catches that signal in the bar, lets the
computation finish (the store keeps its result for anyone who asks again, this visitor's next
click or another visitor) and passes the signal on afterwards, so Streamlit still reruns or
stops the session as asked.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException


@contextmanager
def steady_progress(text: str) -> Iterator[Callable[[float, str], None]]:
    """A bar and its update function `update(fraction, text)`; a stop or rerun requested while the
    work runs is deferred until the block ends."""
    held: list[BaseException] = []
    bar = st.progress(0.0, text=text)

    def update(fraction: float, label: str) -> None:
        if held:
            return
        try:
            bar.progress(min(max(fraction, 0.0), 1.0), text=label)
        except (StopException, RerunException) as exc:  # the session wants to stop or rerun: after the work
            held.append(exc)

    try:
        yield update
    finally:
        if not held:
            try:
                bar.empty()
            except (StopException, RerunException) as exc:
                held.append(exc)
    if held:
        raise held[0]
