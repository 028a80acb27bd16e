"""The home page as a first-time visitor sees it: a link straight to the heatmap, and no
Streamlit "Deploy" button (the operator serves the app; visitors do not deploy it)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest


@pytest.mark.browser
def test_home_links_to_heatmap_without_deploy_button(app_url, page):
    page.goto(app_url)
    link = page.get_by_role("link", name=re.compile("Start with the similarity heatmap"))
    link.wait_for()
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()
    assert page.get_by_role("button", name="Deploy").count() == 0
    link.click()
    page.get_by_role("heading", name=re.compile("Similarity heatmap")).wait_for()
    assert urlparse(page.url).path.rstrip("/").endswith("/similarity")
    assert parse_qs(urlparse(page.url).query)["visitor"]  # the visitor key travels with the link (explorer.core.policy)
