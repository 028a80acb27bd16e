"""Shared fixtures: one model load per session, a real Streamlit server and a real Chromium.

EXPLORER_HOME points at a session temp folder before anything imports the backend, so the
store, the embedded-model cache and the app server all live there and never touch a user's
saved runs.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN_HOME = "EXPLORER_HOME" not in os.environ  # a folder this session makes, and so removes (see pytest_sessionfinish)
os.environ.setdefault("EXPLORER_HOME", tempfile.mkdtemp(prefix="explorer-test-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# AppTest runs pages in this process, and a page sets the server's small share of torch threads (explorer/threads.py):
# keep every test process and the runners it starts on the threads they had before, so later tests are not slowed.
os.environ.setdefault("EXPLORER_TORCH_THREADS", os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


def shared_dir() -> Path:
    return Path(os.environ.get("EXPLORER_SHARED", REPO.parent / "shared"))


DISK_LIMIT = 2**20  # bytes any one file may grow to in a process started with `full_disk`


@pytest.fixture
def full_disk():
    """A subprocess `preexec_fn` under which every file write past 1 MiB fails, as on a full disk
    (RLIMIT_FSIZE: the kernel refuses the write with EFBIG where a full disk gives ENOSPC; both
    reach Python as the same OSError / SafetensorError)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_LIMIT, DISK_LIMIT))

    return limit


@pytest.fixture(autouse=True, scope="session")
def loopback_app_tests():
    """AppTest runs pages in this process with no server, where Streamlit's listening address is
    unset (every interface, so explorer.core.policy would lock visitors out): the tests act as the
    operator at the machine, on loopback. Tests of a served room set the address themselves."""
    from streamlit import config

    config.set_option("server.address", "127.0.0.1")


@pytest.fixture(scope="session")
def mmlu_dir() -> Path:
    """Real MMLU CSVs from ../shared/data/mmlu; tests that need them skip when absent."""
    path = shared_dir() / "data" / "mmlu"
    if not (path / "test").is_dir():
        pytest.skip(f"MMLU data not found at {path} (set EXPLORER_SHARED to the folder holding data/mmlu)")
    return path


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session on the CPU."""
    from explorer.lm.models import load_model

    return load_model("embedded", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded) -> Path:
    """A 4-layer random-weight llama saved as a folder, sharing the embedded tokenizer's vocab."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(embedded.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=embedded.tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from explorer.lm.models import load_model

    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture()
def own_rows():
    """Runs a test adds to the default store are deleted after it (a job still queued or running is
    cancelled first): they would otherwise be what later page tests in the session open on."""
    from explorer import jobs
    from explorer.state.store import Store

    before = {r.id for r in Store().list_runs()}
    yield
    store = Store()
    for run in store.list_runs():
        if run.id not in before:
            if run.status in ("queued", "running"):
                jobs.cancel(store, run.id, grace=1.0, wait=True)
            store.delete_run(run.id)


@pytest.fixture()
def store(tmp_path):
    from explorer.state.store import Store

    return Store(tmp_path / "runs.sqlite")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(embedded):
    """A real `streamlit run app.py` on loopback, sharing this session's EXPLORER_HOME."""
    port = _free_port()
    log = open(Path(os.environ["EXPLORER_HOME"]) / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,  # the app, and the jobs it starts, import this checkout
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"Streamlit did not start; see {log.name}")
    yield url
    server.terminate()
    server.wait(timeout=20)
    log.close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or `make test`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def pytest_collection_modifyitems(config, items) -> None:
    """Every browser test is slow (a real Streamlit server and Chromium): `make test-fast` skips them."""
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so `page` can tell whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture()
def page(browser, request):
    """A fresh browser tab; when its test fails, a screenshot and the page's text are saved
    beside the app's log and the text is printed, so a CI failure shows what the user saw."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        stem = Path(os.environ["EXPLORER_HOME"]) / f"failed-{request.node.name}"
        page.screenshot(path=f"{stem}.png", full_page=True)
        text = page.locator("body").inner_text()
        Path(f"{stem}.txt").write_text(text)
        print(f"Page text at failure (screenshot {stem}.png):\n{text}")
    context.close()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Remove the session's EXPLORER_HOME (each holds a ~0.5 GB dequantized model copy, and
    repeated runs filled a disk). After a failure only the models and run folders go: the
    logs and the failure screenshots stay for a look."""
    if not OWN_HOME:
        return
    home = Path(os.environ["EXPLORER_HOME"])
    if exitstatus == 0:
        shutil.rmtree(home, ignore_errors=True)
    else:
        for folder in ("models", "runs", "pruned", "uploads"):
            shutil.rmtree(home / folder, ignore_errors=True)
