"""After a reload each page shows what it displays and its form follows that run: Prune & heal
follows the newest heal job, Sweep the newest sweep, Similarity the run it shows (Streamlit's
AppTest, in-process, on the embedded model; the runs are stored rows, no job has to run)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from explorer.experiments.sweep import SweepSettings
from explorer.state.cache import cached_distances
from explorer.state.store import Store
from explorer.surgery.heal import HealConfig
from tests.screen import seen

pytestmark = pytest.mark.usefixtures("own_rows")  # conftest: rows made here are deleted after each test

TIMEOUT = 180  # the first page run loads the embedded model into the page's cache


def fresh_page(page: str) -> AppTest:
    """A new session (what a reload gives) on `page`."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> str:
    return " | ".join(seen(c.value) for c in at.caption)


def test_prune_and_heal_form_follows_the_newest_heal_job(embedded):
    heal = HealConfig(steps=7, rank=4, alpha=4, batch_size=2, seq_len=64, eval_every=3, eval_limit=12).to_json()
    settings = {"model": {"source": "embedded", "device": "cpu", "load_in_4bit": False, "trust_remote_code": False},
                "start": 20, "n": 6, "allow_final": False, "heal": heal, "save": True, "dtype": "fp16"}
    run_id = Store().create_run("heal", embedded.name, settings, status="done")
    at = fresh_page("pages/prune_heal.py")
    values = {key: at.number_input(key=key).value for key in ("ph_start", "ph_n", "ph_steps", "ph_rank", "ph_seq", "ph_every")}
    assert values == {"ph_start": 20, "ph_n": 6, "ph_steps": 7, "ph_rank": 4, "ph_seq": 64, "ph_every": 3}
    assert at.checkbox(key="ph_save_model").value is True and at.selectbox(key="ph_dtype").value == "fp16"
    assert f"Showing heal run #{run_id}: layers 20-25 removed · 7 steps of 2 × 64 tokens" in captions(at)


def test_sweep_form_follows_the_newest_sweep(embedded):
    settings = SweepSettings(model="embedded", device="cpu", strategies=("simple",), stride=5, limit=7, seq_len=48)
    run_id = Store().create_run("sweep", embedded.name, settings.to_json(), status="done")
    at = fresh_page("pages/sweep.py")
    assert at.multiselect(key="sw_strategies").value == ["simple"]
    assert (at.number_input(key="sw_stride").value, at.number_input(key="sw_limit").value) == (5, 7)
    assert at.number_input(key="sw_seq").value == 48
    assert f"Showing sweep run #{run_id}: simple · every 5. n" in captions(at)


def test_similarity_form_follows_the_run_it_shows(embedded):
    run_id, _, _ = cached_distances(embedded, "embedded", 3, 24, 2, Store())
    at = fresh_page("pages/similarity.py")
    assert (at.number_input(key="sim_samples").value, at.number_input(key="sim_seq_len").value) == (3, 24)
    assert f"Showing similarity run #{run_id}" in captions(at) and "3 samples × 24 tokens" in captions(at)

