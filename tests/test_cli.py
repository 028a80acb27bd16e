"""The `python -m explorer similarity` contract, run as real subprocesses.

Subprocesses inherit this session's EXPLORER_HOME (set in conftest), so they reuse the
converted embedded model. The error cases all fail before a model loads and run in parallel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.analysis.similarity import compute_distances
from explorer.cli import COMMANDS, main
from explorer.lm.data import make_samples, split_documents

REPO = Path(__file__).resolve().parents[1]


def explorer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "explorer", "similarity", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(explorer_command(*args), cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """Six real news articles from the embedded corpus as a blank-line separated .txt file."""
    docs = list(split_documents("embedded", "train"))[:6]
    path = tmp_path_factory.mktemp("cli") / "calibration.txt"
    path.write_text("\n\n".join(docs))
    return path


def test_similarity_writes_the_contract_json(text_file, tmp_path, embedded):
    out = tmp_path / "nested" / "out.json"
    done = run_cli("--model", "embedded", "--text-file", str(text_file), "--samples", "4", "--seq-len", "32",
                   "--batch-size", "3", "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(out.read_text())
    L = data["num_layers"]
    assert L == 30 and isinstance(data["model"], str) and data["model"]
    assert [len(row) for row in data["distances"]] == [L - n + 1 for n in range(1, L + 1)]
    assert all(0.0 <= d <= 1.0 for row in data["distances"] for d in row)
    assert len(data["optimal"]) == L - 1
    for n, entry in enumerate(data["optimal"], 1):
        row = data["distances"][n - 1][: L - n]  # blocks that keep the final layer, as the paper chooses
        assert entry["n"] == n and entry["distance"] == min(row) and row[entry["layer"]] == min(row)
        # --bootstrap 200 by default: how often this start wins a resample, and the distance's 95% interval.
        assert 0 <= entry["stability"] <= 1
        assert entry["distance_ci"][0] - 1e-6 <= entry["distance"] <= entry["distance_ci"][1] + 1e-6
    assert data["seq_len"] == 32 and data["source"] == str(text_file) and data["bootstrap"]["draws"] == 200
    assert "block sizes have a shallow best block" in done.stdout
    assert data["simple"] == [{"n": n, "layer": L - 1 - n} for n in range(1, L)]
    # The numbers are those of the engine run in this process on the same file.
    samples = make_samples(embedded.tokenizer, str(text_file), 4, 32)
    expected = compute_distances(embedded, samples.ids, batch_size=1).distances
    worst = max(abs(a - b) for ra, rb in zip(data["distances"], expected) for a, b in zip(ra, rb))
    assert worst < 1e-5


def _error_cases(text_file: Path, folder: Path) -> dict[str, list[str]]:
    empty = folder / "empty.txt"
    empty.write_text("\n\n  \n")
    out = str(folder / "out.json")
    good = ["--text-file", str(text_file), "--out", out]
    return {
        "unknown model": ["--model", "no-such-org-lpe/no-such-model-lpe", "--samples", "2", "--seq-len", "32", *good],
        "missing file": ["--text-file", str(folder / "missing.txt"), "--samples", "2", "--seq-len", "32", "--out", out],
        "empty file": ["--text-file", str(empty), "--samples", "2", "--seq-len", "32", "--out", out],
        "seq_len < 2": ["--samples", "2", "--seq-len", "1", *good],
        "samples 0": ["--samples", "0", "--seq-len", "32", *good],
        "batch size 0": ["--samples", "2", "--seq-len", "32", "--batch-size", "0", *good],
    }


@pytest.fixture(scope="module")
def error_runs(text_file, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Every error case at once (each is a Python + torch start-up, none loads a model)."""
    folder = tmp_path_factory.mktemp("cli-errors")
    procs = {
        name: subprocess.Popen(explorer_command(*args), cwd=REPO, env=dict(os.environ), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, args in _error_cases(text_file, folder).items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr)
    assert not (folder / "out.json").exists()
    return results


@pytest.mark.parametrize(
    "case, words",
    [
        ("unknown model", "no-such-org-lpe/no-such-model-lpe"),
        ("missing file", "not found"),
        ("empty file", "empty.txt"),
        ("seq_len < 2", "Sequence length"),
        ("samples 0", "samples"),
        ("batch size 0", "Batch size"),
    ],
)
def test_bad_input_gives_one_error_line(error_runs, case, words):
    code, stdout, stderr = error_runs[case]
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and words in lines[0]


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_prints_for_every_command(command, capsys):
    """argparse %-formats help strings: a bare % in one (a "95% interval") made --help crash."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert "usage: python -m explorer" in capsys.readouterr().out


def test_console_script_is_the_cli():
    """`make install` installs the package editable (pyproject.toml), so `explorer ...` is `python -m explorer ...`."""
    script = Path(sys.executable).parent / "explorer"
    if not script.exists():
        pytest.skip(f"{script} is not installed: run `make install` (pip install -e .)")
    done = subprocess.run([str(script), "similarity", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--bootstrap" in done.stdout
