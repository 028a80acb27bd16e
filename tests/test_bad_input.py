"""Bad input is one sentence, never a traceback, and never after the work: an unwritable --out,
a non-UTF-8 .jsonl, pickled weights, a model's own code failing, a 300-character upload name (and
255-byte ones in CJK and emoji), LoRA alpha <= 0, a huge single-line upload that must cost little
memory and time, damaged safetensors, unknown or missing devices, a task option of the wrong type,
an EXPLORER_HOME that cannot be made, heal --n 0, bad finetuning settings when only icl runs, and
random bytes given as text."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.lm.data import NAME_BYTES, documents, make_samples, save_upload
from explorer.lm.models import load_model
from explorer.surgery.heal import HealConfig

MISSING_MODEL = "/nonexistent-lpe/model"  # loading it would fail with a different message


def cli_error(capsys, *argv: str) -> str:
    """The one stderr line of a failing command, run in this process (the same `main` as the CLI)."""
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", [
    ["similarity", "--samples", "2"],
    ["eval", "--task", "quiz-capitals"],
    ["prune", "--start", "3", "--n", "2"],
    ["heal", "--start", "3", "--n", "2"],
    ["sweep", "--fractions", "0,0.1", "--strategies", "simple"],
    ["loss", "--samples", "2"],
])
def test_unwritable_out_fails_before_the_model_loads(command, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = cli_error(capsys, *command, "--model", MISSING_MODEL, "--out", str(blocker / "out"))
    assert line.startswith(f"error: Cannot write --out {blocker / 'out'} ({blocker} is a file, not a folder)")
    assert "nothing was computed" in line


def test_non_utf8_jsonl_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "caf\u00e9 au lait"}\n'.encode("latin-1") * 3)
    line = cli_error(capsys, "similarity", "--text-file", str(path), "--out", str(tmp_path / "o.json"))
    assert line == "error: latin1.jsonl is not UTF-8 text (byte 0xe9 cannot be decoded): save it as UTF-8 and try again."


def test_lora_alpha_must_be_positive(tmp_path, capsys):
    for alpha in (0, -4):
        with pytest.raises(ExplorerError, match="LoRA alpha"):
            HealConfig(alpha=alpha).check()
    line = cli_error(capsys, "heal", "--start", "3", "--n", "2", "--alpha", "0", "--out", str(tmp_path / "h"))
    assert line == "error: Invalid healing settings: LoRA alpha must be at least 1 (got 0)."
    line = cli_error(capsys, "heal", "--start", "3", "--n", "2", "--eval-every", "0", "--seq-len", "1", "--out", str(tmp_path / "h"))
    assert line == ("error: Invalid healing settings: sequence length must be at least 2 (got 1); evaluation interval must "
                    "be at least 1 (got 0).")


class Payload:
    """A pickle that would create a file when unpickled: proof of code execution if it exists."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture()
def pickled_folder(tmp_path, tiny_llama_dir) -> tuple[Path, Path]:
    """The tiny llama's config and tokenizer, with weights only as a .bin holding a code payload."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, folder)
    weights = {name: tensor for name, tensor in load_model(str(tiny_llama_dir), device="cpu").model.state_dict().items()}
    marker = tmp_path / "code-ran"
    torch.save({**weights, "payload": Payload(marker)}, folder / "pytorch_model.bin")
    return folder, marker


def test_pickled_weights_are_refused_with_the_reason(pickled_folder):
    folder, marker = pickled_folder
    (folder / "model.safetensors").unlink()
    with pytest.raises(ExplorerError) as caught:
        load_model(str(folder), device="cpu")
    assert "pickle holding Python objects, which are never loaded" in str(caught.value)
    assert "only safetensors files or .bin files of plain tensors load" in str(caught.value)
    assert not marker.exists()


def test_safetensors_win_over_a_pickle_beside_them(pickled_folder):
    folder, marker = pickled_folder
    assert load_model(str(folder), device="cpu").num_layers == 4
    assert not marker.exists()


def test_failing_remote_code_is_one_sentence(tmp_path, tiny_llama_dir):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace(
        '"model_type"', '"auto_map": {"AutoConfig": "configuration_boom.BoomConfig"},\n  "model_type"', 1))
    (folder / "configuration_boom.py").write_text("raise RuntimeError('this model needs a GPU library')\n")
    with pytest.raises(ExplorerError) as caught:
        load_model(str(folder), device="cpu", trust_remote_code=True)
    message = str(caught.value)
    assert message.startswith("The model's own code (trust_remote_code) failed while loading")
    assert "RuntimeError: this model needs a GPU library" in message


def test_a_300_character_upload_name_is_saved(tmp_path):
    name = "lecture-notes-" + "x" * 286 + ".txt"
    assert len(name) == 304
    data = b"First document.\n\nSecond document.\n"
    path = save_upload(name, io.BytesIO(data), tmp_path / "uploads")
    assert path.read_bytes() == data and path.suffix == ".txt"
    assert len(path.name.encode()) <= NAME_BYTES
    assert save_upload(name, io.BytesIO(data), tmp_path / "uploads") == path  # same content, same file
    assert list(documents(str(path))) == ["First document.", "Second document."]


def reference_documents(text: str) -> list[str]:
    """The blank-line split, done on the whole text at once (how the reader worked before streaming)."""
    return [block.strip() for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def test_streamed_txt_reader_splits_like_the_whole_text(tmp_path):
    long_line = "word " * 40_000  # 200k characters: read in several pieces
    text = (f"  first doc\nstill first\n\n\n \t \nsecond\r\n\r\n{long_line}\n\nlast line without newline \t"
            f"\n\n\n{long_line}tail\n   \n")
    path = tmp_path / "docs.txt"
    path.write_bytes(text.encode())
    expected = reference_documents(text.replace("\r\n", "\n"))
    assert list(documents(str(path), max_chars=10**9)) == expected
    assert list(documents(str(path), max_chars=50)) == [doc[:50].strip() for doc in expected]


def test_huge_single_line_upload_costs_little(tmp_path, embedded):
    """20 MB on one line (the reported 50 MB upload took the server to 7.3 GB): read only what
    8 samples of 64 tokens need."""
    path = tmp_path / "one-line.txt"
    with open(path, "w") as handle:
        for _ in range(20):
            handle.write("the quick brown fox jumps over the lazy dog " * 23_831)  # ~1 MB each
    assert path.stat().st_size > 20 * 10**6
    tracemalloc.start()
    started = time.perf_counter()
    samples = make_samples(embedded.tokenizer, str(path), 8, 64)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [len(ids) for ids in samples.ids] == [64]  # one document, cut to the sample length
    assert peak < 4 * 2**20, peak  # the whole file in memory would be > 20 MB
    assert seconds < 5, seconds


@pytest.mark.parametrize("stem", ["講義ノート" * 17, "📚" * 70, "é" * 200], ids=["85 CJK", "70 emoji", "200 accented"])
def test_upload_names_are_cut_by_bytes_not_characters(stem, tmp_path):
    """85 CJK characters are 255 bytes and 70 emoji 280: cut at 80 characters they made
    'File name too long'. Cut by bytes, never inside a character, suffix kept."""
    data = b"First document of the upload.\n\nSecond document of the upload.\n"
    path = save_upload(stem + ".txt", io.BytesIO(data), tmp_path / "uploads")
    assert path.read_bytes() == data and path.suffix == ".txt"
    assert len(path.name.encode()) <= NAME_BYTES - len(".part")  # its temporary name fits too
    assert stem.startswith(path.stem.split("-", 1)[1]) and len(path.stem.split("-", 1)[1]) > 10
    assert list(documents(str(path))) == ["First document of the upload.", "Second document of the upload."]


@pytest.fixture()
def damaged_model(tmp_path, tiny_llama_dir) -> Path:
    """The tiny llama with its safetensors file cut in half (an interrupted download)."""
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_llama_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.mark.parametrize("command", ["similarity", "loss"])
def test_a_damaged_safetensors_file_is_one_sentence(command, damaged_model, tmp_path, capsys):
    line = cli_error(capsys, command, "--model", str(damaged_model), "--samples", "2", "--seq-len", "16",
                     "--out", str(tmp_path / "out.json"))
    assert line.startswith(f"error: The weights file {damaged_model / 'model.safetensors'} is damaged or incomplete")
    assert not (tmp_path / "out.json").exists()


def test_unknown_and_missing_devices_are_one_sentence(tmp_path, capsys):
    out = ["--samples", "2", "--seq-len", "16", "--out", str(tmp_path / "o.json")]
    assert cli_error(capsys, "loss", "--device", "tpu", *out) == (
        "error: Unknown device 'tpu': use cpu or cuda (cuda:N for one GPU of several).")
    if not torch.cuda.is_available():
        assert "this machine has no CUDA GPU that torch can use" in cli_error(capsys, "similarity", "--device", "cuda", *out)


def test_a_task_option_of_the_wrong_type_is_one_sentence(tmp_path, capsys):
    line = cli_error(capsys, "eval", "--task", "quiz-capitals", "--option", "shots=abc", "--out", str(tmp_path / "o.json"))
    assert line == "error: Task 'quiz-capitals' option shots takes a whole number, not 'abc'."


@pytest.mark.parametrize("home", ["a-file/home", "/sys/explorer-home"], ids=["file in the way", "read-only"])
def test_an_explorer_home_that_cannot_be_made_is_one_sentence(home, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    env = {**os.environ, "EXPLORER_HOME": str(tmp_path / home)}
    done = subprocess.run([sys.executable, "-m", "explorer", "loss", "--samples", "2", "--seq-len", "16", "--out",
                           str(tmp_path / "o.json")], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: Cannot create EXPLORER_HOME {tmp_path / home}") and "writable folder" in line


def test_heal_of_no_layers_is_refused(tmp_path, capsys):
    line = cli_error(capsys, "heal", "--start", "3", "--n", "0", "--out", str(tmp_path / "h"))
    assert line.startswith("error: Healing removes a block of layers first: the block size n must be at least 1 (got 0)")


def test_bad_finetuning_settings_are_refused_even_when_only_icl_runs(tmp_path, capsys):
    out = ["--mode", "icl", "--out", str(tmp_path / "c.json")]
    assert cli_error(capsys, "classify", "--steps", "-1", *out) == (
        "error: Finetuning needs steps >= 0, a batch size and a LoRA rank of at least 1.")
    with pytest.raises(SystemExit) as stop:  # argparse's own refusal, now one line like the others
        main(["classify", "--weights", "bogus", *out])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: classify: argument --weights: invalid choice: 'bogus'")


def test_no_bootstrap_is_said_as_asked(tiny_llama_dir, tmp_path, capsys):
    assert main(["similarity", "--model", str(tiny_llama_dir), "--samples", "2", "--seq-len", "16", "--bootstrap", "0",
                 "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "No bootstrap resamples were asked for (--bootstrap 0)" in out and "stored before" not in out


def test_random_bytes_are_not_text(tmp_path):
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(ExplorerError, match="garbage.txt is not text"):
        list(documents(str(garbage)))
    latin = tmp_path / "latin.txt"  # a little text that is not UTF-8 is still text (read with replacements)
    latin.write_bytes("Un café au lait, s'il vous plaît, et une crème brûlée.\n\nMerci.".encode("latin-1"))
    assert len(list(documents(str(latin)))) == 2
