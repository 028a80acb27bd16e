"""The pages with layer sets (Streamlit's AppTest, in-process, embedded model): the Prune page
prunes what any strategy chooses, sub-layers included, and refuses to heal a set that is not one
block; the Similarity page marks other strategies' layers on the heatmap and draws the sub-layer
panel. A small stored heatmap sets the calibration text every strategy uses, so each need is a
short pass."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from explorer.state.cache import cached_distances
from explorer.state.store import Store

TIMEOUT = 600  # the first page run loads the embedded model; a strategy's need is one more pass


@pytest.fixture(scope="module")
def small_heatmap(embedded) -> int:
    return cached_distances(embedded, "embedded", 2, 16, store=Store())[0]


def page(path: str) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def test_prune_page_prunes_what_a_strategy_chooses(embedded, small_heatmap):
    at = page("pages/prune_heal.py")
    at.selectbox(key="ph_strategy").set_value("attention-drop").run()
    at.number_input(key="ph_n").set_value(3).run()
    assert not at.exception, at.exception
    chosen = [c.value for c in at.caption if c.value.startswith("attention-drop removes")]
    assert chosen and "(3 attention sub-layers)" in chosen[0], [c.value for c in at.caption]
    at.button(key="ph_heal").click().run()
    assert any("Healing takes one contiguous block" in e.value for e in at.error)
    at.button(key="ph_prune").click().run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Removed attention of layers") for s in at.success)


def test_similarity_page_marks_strategies_and_draws_sublayers(embedded, small_heatmap):
    at = page("pages/similarity.py")
    at.multiselect(key="sim_marked").set_value(["block-influence"]).run()
    assert not at.exception, at.exception
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [trace.get("name", "") for trace in heatmap["data"]]
    assert "block-influence: layers it removes (row n)" in names
    marks = heatmap["data"][names.index("block-influence: layers it removes (row n)")]
    assert len(marks["x"]) == sum(range(1, embedded.num_layers))  # n layers in each row n = 1..L-1
    if any(button.key == "sim_sub_run" for button in at.button):  # not yet scored on this text (the prune test may have)
        at.button(key="sim_sub_run").click().run()
    assert not at.exception, at.exception
    panel = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert [len(row) for row in panel["data"][0]["z"]] == [embedded.num_layers, embedded.num_layers]
