"""The Similarity page driven in-process by Streamlit's AppTest: a real calibration on the
embedded model, block selection by hand, and bad input reaching the user as st.error."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from explorer.lm.layers import parameter_count
from tests.screen import seen

PAGE = "pages/similarity.py"
TIMEOUT = 180  # the first run loads the embedded model into the page's cache


@pytest.fixture()
def app() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception
    return at


def calibrate(at: AppTest, samples: int, seq_len: int) -> AppTest:
    at.number_input(key="sim_samples").set_value(samples)
    at.number_input(key="sim_seq_len").set_value(seq_len)
    return at.button(key="sim_run").click().run()


def errors(at: AppTest) -> list[str]:
    return [seen(e.value) for e in at.error]


def test_calibration_draws_heatmap_and_selects_block(app, embedded):
    at = calibrate(app, 4, 32)
    assert not at.exception
    assert not errors(at)
    assert len(at.get("plotly_chart")) == 3  # heatmap, min distance vs n, stability of the best block
    assert any("block sizes have a shallow best block" in c.value and "resamples" in c.value for c in at.caption)
    assert any("4 samples × 32 tokens" in seen(c.value) and "(run #" in seen(c.value) for c in at.caption)

    at.number_input(key="block_start").set_value(3)
    at.number_input(key="block_n").set_value(3).run()
    layers = embedded.model.model.layers
    params = sum(parameter_count(layers[i]) for i in (3, 4, 5))
    summary = at.success[0].value
    assert f"layers 3-5 of {embedded.num_layers}" in summary
    assert f"{params / 1e6:.1f}M parameters" in summary
    block = at.session_state["selected_block"]
    assert (block["start"], block["n"], block["num_layers"]) == (3, 3, embedded.num_layers)
    assert block["model"]["source"] == "embedded"

    at.number_input(key="block_n").set_value(embedded.num_layers - 3).run()
    assert any("final layer" in w.value for w in at.warning)


def test_zero_samples_is_a_message_not_a_traceback(app):
    at = calibrate(app, 0, 32)
    assert not at.exception
    assert any("at least 1" in e for e in errors(at))


def test_empty_upload_is_a_message_not_a_traceback(app):
    app.radio(key="sim_source").set_value("Upload a file").run()
    app.get("file_uploader")[0].set_value(("empty.txt", b"\n\n", "text/plain")).run()
    at = calibrate(app, 4, 32)
    assert not at.exception
    assert any("No usable text" in e for e in errors(at))


def test_random_bytes_and_a_short_text_on_the_page(app):
    """Random bytes named .txt are refused as not text; a text with fewer usable documents than asked
    is computed on what it has, and the caption says how many samples that really is."""
    import os

    app.radio(key="sim_source").set_value("Upload a file").run()
    app.get("file_uploader")[0].set_value(("garbage.txt", os.urandom(8192), "text/plain")).run()
    at = calibrate(app, 32, 32)
    assert not at.exception and any("garbage.txt is not text" in e for e in errors(at))
    two = ("The first document of this upload talks about the weather and the harvest in the valley this year.\n\n"
           "The second document of this upload talks about the trains that cross the valley every morning.")
    at.get("file_uploader")[0].set_value(("two.txt", two.encode(), "text/plain")).run()
    at = calibrate(at, 32, 32)
    assert not at.exception, errors(at)
    assert any("2 samples (32 asked; the text has only 2 usable documents) × 32 tokens" in seen(c.value) for c in at.caption)
