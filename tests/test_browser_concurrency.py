"""A class pressing Run at once: several Chromium tabs (separate sessions of one server sharing one
model) start the same similarity calculation within a second. Every tab gets the heatmap, none
an error, and the store holds one run for those settings: computed once, shared by the rest."""

from __future__ import annotations

import re
import time

import pytest

from explorer.state.store import Store

TABS = 4
SAMPLES, TOKENS = 8, 64  # settings no other test uses, so the run is computed here
CHART = ".st-key-similarity_chart .js-plotly-plot"


def runs_for_these_settings() -> list:
    return [r for r in Store().list_runs("similarity")
            if (r.settings["source"], r.settings["samples"], r.settings["seq_len"]) == ("embedded", SAMPLES, TOKENS)]


def open_similarity(page, app_url: str) -> None:
    page.goto(app_url)
    page.get_by_role("link", name=re.compile("Similarity heatmap")).click()
    for label, value in (("Samples", SAMPLES), ("Tokens per sample", TOKENS)):
        field = page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Enter")
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


@pytest.mark.slow
@pytest.mark.browser
def test_tabs_pressing_run_at_once_all_get_one_shared_run(app_url, browser, page):
    assert not runs_for_these_settings()
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(TABS - 1)]
    try:
        pages = [page] + [context.new_page() for context in contexts]
        for tab in pages:
            tab.set_default_timeout(120_000)
            open_similarity(tab, app_url)
        buttons = [tab.get_by_role("button", name="Run", exact=True) for tab in pages]
        for button in buttons:
            button.wait_for()  # ready in every tab before the clock starts
        started = time.perf_counter()
        for button in buttons:
            button.dispatch_event("click")  # no actionability waits: a busy machine stays within the second
        assert time.perf_counter() - started < 1.0  # all pressed within a second
        origins = []
        for tab in pages:
            caption = tab.get_by_text(re.compile(rf"{SAMPLES} samples × \d+ tokens · (computed now|loaded from cache)"))
            caption.wait_for()
            origins.append(re.search(r"computed now|loaded from cache", caption.inner_text()).group())
            tab.locator(CHART).wait_for()
            assert tab.locator('[data-testid="stException"]').count() == 0
            assert "Captured" not in tab.locator("body").inner_text()
        runs = runs_for_these_settings()
        assert len(runs) == 1 and runs[0].status == "done"
        assert origins.count("computed now") == 1, origins
    finally:
        for context in contexts:
            context.close()
