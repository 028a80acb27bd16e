"""The Prune page's speed panel (pages/panels/speed.py), in Streamlit's AppTest on the embedded model: it
prices the measurement before it starts, starts it as a stored background "speed" run of the picked
block, and shows the finished run's table again after a reload."""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from explorer import jobs
from explorer.state.store import Store

TIMEOUT = 180  # the first page run loads the embedded model into the page's cache


def fresh_page() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/prune_heal.py").run()
    assert not at.exception, at.exception
    return at


def test_speed_panel_estimates_starts_a_run_and_shows_it(embedded):
    at = fresh_page()
    assert "Speed and memory" in [h.value for h in at.subheader]
    captions = " | ".join(c.value for c in at.caption)
    assert "About " in captions and "2 models × 3 interleaved repeats × batch 1, 8" in captions
    assert "No speed measurement of these layers yet." in captions
    start, n = at.number_input(key="ph_start").value, at.number_input(key="ph_n").value
    at.number_input(key="ph_speed_prompt").set_value(4)
    at.number_input(key="ph_speed_steps").set_value(2)
    at.text_input(key="ph_speed_batches").set_value("1")
    at.number_input(key="ph_speed_repeats").set_value(1)
    at.button(key="ph_speed_start").click().run()
    assert not at.exception, at.exception
    store = Store()
    run = store.list_runs("speed")[0]
    assert run.settings["drop"] == {"start": start, "n": n} and run.settings["model"]["source"] == "embedded"
    assert run.settings["speed"] == {"prompt_tokens": 4, "new_tokens": 2, "batch_sizes": [1], "repeats": 1}
    deadline = time.time() + 300
    while store.get_run(run.id).status in jobs.ACTIVE and time.time() < deadline:
        time.sleep(2)
    done = store.get_run(run.id)
    assert done.status == "done", done.error
    assert done.result["comparisons"]["pruned"]["ideal"] == 30 / (30 - n)

    again = fresh_page()  # a reload: the panel finds the block's newest run in the store
    texts = " | ".join(t.value for t in again.text)
    assert f"Showing speed run #{run.id}: layers {start}-{start + n - 1} dropped" in texts and "ideal ×" in texts
    [table] = [d.value for d in again.dataframe if "decode tokens/s (best)" in d.value.columns]
    assert list(table["model"]) == ["unpruned", "pruned"]


@pytest.fixture(autouse=True)
def _no_leftover_rows():
    before = {r.id for r in Store().list_runs()}
    yield
    store = Store()
    for run in store.list_runs():
        if run.id not in before:
            store.delete_run(run.id)
