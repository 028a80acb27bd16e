"""End to end in a real headless Chromium: pick a block with the number inputs, prune it,
start a short heal as a background job, and watch the live plot gain points.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

PLOT = ".st-key-ph_live_plot .js-plotly-plot"
# Enough steps that training spans several of the page's 2 s redraws on a fast machine too
# (about 0.5 s a step plus 0.8 s an evaluation on the 2-core reference machine).
STEPS = 12
EVAL_EVERY = 4


def set_number(page, label: str, value: float) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def wait_idle(page) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def plotted_points(page) -> int:
    """Markers drawn in the live plot (train loss, held-out loss and accuracy traces)."""
    return page.locator(f"{PLOT} .scatterlayer .trace .points path").count()


def step_reached(page) -> int:
    text = page.get_by_text(re.compile(r"^Heal run #\d+ ·")).first.inner_text()
    return int(re.search(r"step (\d+) / \d+", text).group(1))


@pytest.mark.slow
@pytest.mark.browser
def test_prune_then_heal_live(app_url, page, embedded):
    page.goto(app_url)
    page.get_by_role("link", name=re.compile("Prune & heal")).click()
    page.get_by_label("Layers n", exact=True).wait_for()
    set_number(page, "Layers n", 4)
    set_number(page, "First layer l", 20)
    wait_idle(page)
    page.get_by_text("Healing and evaluation settings").click()
    for label, value in (("Steps", STEPS), ("Batch size", 2), ("Tokens per sample", 32), ("Evaluate every (steps)", EVAL_EVERY),
                         ("Questions per evaluation", 4), ("Held-out samples (loss)", 2)):
        set_number(page, label, value)
        wait_idle(page)

    page.get_by_role("button", name="Prune", exact=True).click()
    page.get_by_text(re.compile(f"Removed layers 20-23 of {embedded.num_layers}")).wait_for(timeout=180_000)
    page.get_by_text("Pruned completes", exact=True).wait_for(timeout=30_000)  # streamed after the summary
    wait_idle(page)

    page.get_by_text("Save healed model", exact=True).click()  # saving is a choice, off by default
    wait_idle(page)
    page.get_by_role("button", name="Start healing").click()
    page.get_by_text(re.compile(r"^Heal run #\d+ ·")).first.wait_for(timeout=60_000)
    page.locator(PLOT).wait_for()
    seen = [(step_reached(page), plotted_points(page))]
    deadline = time.time() + 400
    while time.time() < deadline and not page.get_by_text(re.compile(r"Heal run #\d+ · done")).count():
        time.sleep(2)
        seen.append((step_reached(page), plotted_points(page)))
    page.set_viewport_size({"width": 1400, "height": 2400})  # Streamlit scrolls its main block, not the page
    page.locator(PLOT).scroll_into_view_if_needed()
    page.screenshot(path=str(Path(os.environ["EXPLORER_HOME"]) / "heal.png"))  # for a look by hand
    steps, points = zip(*seen)
    assert max(points) > points[0], f"the plot never gained points: {seen}"
    assert len(set(steps)) >= 3, f"the step counter did not advance while polling: {seen}"
    assert page.get_by_text(re.compile(r"Heal run #\d+ · done")).count(), f"the job did not finish: {seen}"
    page.get_by_text("Healed, merged model saved to").wait_for(timeout=30_000)
