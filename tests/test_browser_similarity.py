"""End to end in a real headless Chromium: run a small calibration on the Similarity page,
click one heatmap cell at its pixel position, and see exactly that block selected.

This is the proof that clicks reach the page: st.plotly_chart(on_select=...) returns nothing
for go.Heatmap cells, so the heatmap is drawn with scatter markers that do report clicks.
"""

from __future__ import annotations

import re

import pytest

CHART = ".st-key-similarity_chart .js-plotly-plot"
SAMPLES = 6  # not the page test's 4, so in a fresh store the caption appears only once this run is done
TARGETS = [(3, 3), (10, 5)]  # (l, n): layers 3-5, then 10-14; neither is the default block


def cell_position(page, l: int, n: int) -> tuple[float, float]:
    """Page pixel of cell (l, n): the plot area is plotly's drag layer; its axis ranges map data to pixels."""
    box = page.locator(f"{CHART} .nsewdrag").first.bounding_box()
    x_range, y_range = page.eval_on_selector(CHART, "el => [el._fullLayout.xaxis.range, el._fullLayout.yaxis.range]")
    x = box["x"] + (l - x_range[0]) / (x_range[1] - x_range[0]) * box["width"]
    y = box["y"] + (y_range[1] - n) / (y_range[1] - y_range[0]) * box["height"]
    return x, y


def wait_idle(page) -> None:
    """Streamlit marks its root with the script state; clicks land on the final chart once it is idle."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
    page.locator(f"{CHART} .nsewdrag").first.wait_for()


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


@pytest.mark.browser
def test_click_on_heatmap_cell_selects_that_block(app_url, page, embedded, tmp_path):
    page.goto(app_url)
    page.get_by_role("link", name=re.compile("Similarity heatmap")).click()
    set_number(page, "Samples", SAMPLES)
    set_number(page, "Tokens per sample", 32)
    page.get_by_role("button", name="Run").click()
    page.get_by_text(re.compile(f"{SAMPLES} samples × 32 tokens · (computed now|loaded from cache)")).wait_for()
    wait_idle(page)

    summary = page.get_by_text(re.compile(r"^Selected: remove"))
    for l, n in TARGETS:  # a second click proves the selection follows each new click
        expected = f"layers {l}-{l + n - 1} of {embedded.num_layers}"
        assert expected not in summary.inner_text()
        page.locator(CHART).scroll_into_view_if_needed()
        page.mouse.click(*cell_position(page, l, n))
        page.get_by_text(re.compile(f"Selected: remove {expected} ")).wait_for(timeout=30_000)
        wait_idle(page)  # the rerun writes the summary before it redraws the chart
        assert page.get_by_label("First layer l", exact=True).input_value() == str(l)
        assert page.get_by_label("Block size n", exact=True).input_value() == str(n)
    page.screenshot(path=str(tmp_path / "similarity.png"))
