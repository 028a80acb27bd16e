"""The room in a real headless Chromium: a crafted model name stays plain text (no link, no remote
image) on the Classification and Runs pages, and a heatmap whose tab is closed, or whose Run is
clicked twice, is stored as done, never as "failed: StopException"."""

from __future__ import annotations

import re
import time

import pytest

from explorer.state.store import Store

CRAFTED = "[click me](https://evil.example/x) ![](https://evil.example/t.png)"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def open_page(page, app_url: str, link: str) -> None:
    page.goto(app_url)
    page.get_by_role("link", name=re.compile(link)).click()
    page.locator(IDLE).wait_for()


def nothing_remote(page) -> None:
    links = page.locator("a[href*='evil.example']")
    assert links.count() == 0, [links.nth(i).evaluate("e => e.parentElement.outerHTML") for i in range(links.count())]
    assert page.locator("img[src*='evil.example']").count() == 0


@pytest.mark.browser
@pytest.mark.slow
def test_a_crafted_model_name_is_plain_text(app_url, page):
    store = Store()
    run_id = store.create_run("classify", CRAFTED, {"model": CRAFTED, "task": "sst2", "modes": ["icl"]}, status="failed")
    store.update_run(run_id, error=f"Could not load '{CRAFTED}' from the Hugging Face hub.")
    try:
        open_page(page, app_url, "Classification after cutting")
        page.get_by_text("Hugging Face id / local path").click()
        box = page.get_by_label(re.compile("Model id|Hugging Face model id"))
        box.fill(CRAFTED)
        box.press("Enter")
        page.get_by_text(re.compile(rf"Run #{run_id} · failed")).wait_for()  # the stored run, as its visitor sees it
        page.locator(IDLE).wait_for()
        nothing_remote(page)
        assert CRAFTED in page.locator("body").inner_text().replace("\u2060", "")  # joiners keep it from autolinking

        open_page(page, app_url, "Runs")
        page.get_by_text(re.compile(rf"#{run_id} · classify")).first.wait_for()
        nothing_remote(page)
        assert f"Result: failed: Could not load '{CRAFTED}'" in page.locator("body").inner_text().replace("\u2060", "")
    finally:
        store.delete_run(run_id)


def heatmap_runs(samples: int) -> list:
    return [r for r in Store().list_runs("similarity") if (r.settings["samples"], r.settings["seq_len"]) == (samples, 96)]


def start_heatmap(page, app_url: str, samples: int) -> None:
    open_page(page, app_url, "Similarity heatmap")
    for label, value in (("Samples", samples), ("Tokens per sample", 96)):
        field = page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Enter")
    page.locator(IDLE).wait_for()


def finished(samples: int, timeout: float = 300) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = heatmap_runs(samples)
        if runs and all(r.status != "running" for r in runs):
            return runs
        time.sleep(1)
    pytest.fail(f"the heatmap of {samples} samples did not finish: {heatmap_runs(samples)}")


@pytest.mark.browser
@pytest.mark.slow
def test_a_heatmap_whose_tab_closes_or_whose_run_is_clicked_twice_is_stored(app_url, browser, embedded):
    closing = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = closing.new_page()
    tab.set_default_timeout(120_000)
    start_heatmap(tab, app_url, 23)
    tab.get_by_role("button", name="Run", exact=True).click()
    tab.get_by_text(re.compile("Forward passes: \\d+ / \\d+")).wait_for()  # mid-heatmap
    closing.close()  # the visitor closes the tab
    [closed] = finished(23)
    assert (closed.status, closed.error) == ("done", None)

    twice = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = twice.new_page()
    tab.set_default_timeout(180_000)
    start_heatmap(tab, app_url, 21)
    tab.get_by_role("button", name="Run", exact=True).dblclick()
    tab.get_by_text(re.compile("21 samples × 96 tokens · (computed now|loaded from cache)")).wait_for()
    twice.close()
    runs = finished(21)
    assert [(r.status, r.error) for r in runs] == [("done", None)]
