"""Text sources for calibration, healing and validation, and their tokenized samples.

Sources: the embedded corpus (works offline), C4 streamed with `datasets` (online), or a
local .txt (documents separated by blank lines), .jsonl (field `text`) or .parquet (column
`text`) file. Every source is split the same deterministic way: every tenth document is
held out for validation, so calibration/healing text never overlaps validation text.

The embedded corpus is the Lee news corpus (real ABC news articles, 343 distinct documents) that
ships inside the `gensim` wheel as test data. It is real English prose, C4-like in register,
and installs from PyPI with no network access at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Literal

import torch
from huggingface_hub import HfApi, constants

from explorer.core.errors import ExplorerError

EMBEDDED = "embedded"
C4 = "c4"
EMBEDDED_FILES = ("lee_background.cor", "lee.cor")
MIN_TOKENS = 16
HELDOUT_EVERY = 10
# Documents are cut to a character budget while they are read: a sample needs seq_len tokens, and
# no tokenizer averages 64 characters a token, so the cut never shortens a sample of ordinary text,
# while a 50 MB single-line upload costs kilobytes instead of gigabytes in the tokenizer.
CHARS_PER_TOKEN = 64
MAX_DOC_CHARS = 2**20  # the cut when no sequence length is known (checking that a file has text)
READ_PIECE = 2**16  # characters read at a time from a text file, so a single huge line never sits in memory
NAME_BYTES = 255  # file systems refuse longer file names, counted in bytes of UTF-8 (a CJK character is 3, an emoji 4)
UPLOAD_NAME_BYTES = NAME_BYTES - len(".part")  # an upload's saved name, with room for its temporary suffix
TEXT_PROBE = 2**16  # bytes of a .txt file looked at to decide whether it is text
NOT_TEXT_SHARE = 0.1  # more undecodable or control characters than this in the probe: not text

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Samples:
    """Token-id lists plus the key that identifies them in the cache."""

    ids: list[list[int]]
    fingerprint: str


def embedded_corpus_dir() -> Path:
    """Find gensim's test data without importing gensim (its import is slow and pulls scipy)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ExplorerError("The embedded corpus is missing: run `pip install --no-deps gensim` (or `make install`).")
    return Path(spec.origin).parent / "test" / "test_data"


def _embedded_documents(max_chars: int) -> Iterable[str]:
    folder = embedded_corpus_dir()
    for name in EMBEDDED_FILES:
        # ASCII except one Latin-1 pound sign in lee.cor, which strict UTF-8 rejects.
        with open(folder / name, encoding="latin-1") as handle:
            yield from (line.strip()[:max_chars] for line in handle if line.strip())


def check_text_file(path: Path) -> None:
    """Refuse a .txt file that is not text (an image or random bytes renamed): its start holds a NUL
    byte, or over a tenth of it is undecodable as UTF-8 or control characters. Otherwise the reader
    would turn the bytes into replacement characters and a few accidental "documents"."""
    with open(path, "rb") as handle:
        probe = handle.read(TEXT_PROBE)
    text = probe.decode("utf-8", errors="replace")
    if len(probe) == TEXT_PROBE:  # the probe may end inside a character: not the file's fault
        text = text.rstrip("\ufffd")
    odd = sum(ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f\v") for ch in text)
    if b"\0" in probe or (text and odd / len(text) > NOT_TEXT_SHARE):
        raise ExplorerError(f"{path.name} is not text ({odd} of its first {len(text)} characters are not readable as "
                            "UTF-8 text): give a plain-text .txt, a .jsonl or a .parquet file.")


def _txt_documents(path: Path, max_chars: int) -> Iterator[str]:
    """Blank-line separated documents, each cut to `max_chars`, streamed in pieces of READ_PIECE
    characters: memory stays at one document's budget however long a line is. A line of only
    spaces or tabs looks blank in an editor, so it separates documents too."""
    parts: list[str] = []
    size, line_start = 0, True
    with open(path, encoding="utf-8", errors="replace") as handle:
        for piece in iter(lambda: handle.readline(READ_PIECE), ""):
            if line_start and piece.endswith("\n") and not piece.strip(" \t\n"):
                if text := "".join(parts).strip():
                    yield text
                parts, size = [], 0
            elif size < max_chars:
                parts.append(piece[: max_chars - size])
                size += len(parts[-1])
            line_start = piece.endswith("\n")
    if text := "".join(parts).strip():
        yield text


def jsonl_records(path: str | Path, what: str, fields: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Every line of a JSON Lines file of `what` (e.g. "GSM8K") as (where, row), each row an object with
    text `fields`; a missing or empty file, or a line without them, is one sentence naming the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExplorerError(f"{what} file not found: {path}.")
    records = []
    for number, row in jsonl_values(path, str(path)):
        where = f"{path} line {number}"
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in fields):
            raise ExplorerError(f"{where}: each line needs the text fields {', '.join(fields[:-1])} and {fields[-1]}.")
        records.append((where, row))
    if not records:
        raise ExplorerError(f"{path} holds no {what} rows.")
    return records


def jsonl_values(path: Path, name: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file; a line that is not
    JSON fails with its number, the file shown as `name`."""
    with open(path, encoding="utf-8") as handle:
        lines = enumerate(handle, 1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise ExplorerError(f"{name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded): "
                                    "save it as UTF-8 and try again.") from exc
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExplorerError(f"{name} line {number} is not valid JSON ({exc.msg}).") from exc


def _jsonl_documents(path: Path, max_chars: int) -> Iterable[str]:
    for number, record in jsonl_values(path, path.name):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ExplorerError(f"{path.name} line {number} has no string field 'text'.")
        yield record["text"][:max_chars]


def _parquet_documents(path: Path, max_chars: int) -> Iterable[str]:
    import pyarrow.parquet as pq  # deferred: pyarrow loads only for .parquet text

    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exc:  # pyarrow raises several types for bad files and missing columns
        raise ExplorerError(f"Could not read column 'text' from {path.name}: {exc}") from exc
    return (str(t)[:max_chars] for t in table.column("text").to_pylist() if t)


@functools.cache  # a success only: MMLU loads 57 subjects from one repo
def check_hub_dataset(repo_id: str, alternative: str) -> None:
    """Fail in a second or two when the hub is unreachable, instead of after `datasets`' half
    minute of retries (which a page re-running on every click would repeat). With
    HF_HUB_OFFLINE=1 the check is skipped and `datasets` reads its local cache."""
    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(repo_id, timeout=10)
    except Exception as exc:  # connection errors come from several HTTP libraries
        raise ExplorerError(
            f"Cannot reach {repo_id} on the Hugging Face hub ({type(exc).__name__}): {alternative}, "
            "or set HF_HUB_OFFLINE=1 if it is in your datasets cache."
        ) from exc


def load_hub_dataset(repo_id: str, alternative: str, *args, **kwargs):
    """`datasets.load_dataset(repo_id, ...)` with one sentence naming `alternative` on any failure."""
    check_hub_dataset(repo_id, alternative)
    try:
        from datasets import load_dataset  # deferred: datasets (seconds to import) loads only for hub data

        return load_dataset(repo_id, *args, **kwargs)
    except Exception as exc:  # network, hub and cache errors come in many types
        raise ExplorerError(f"Could not load {repo_id} from the Hugging Face hub ({type(exc).__name__}): {alternative}.") from exc


def _c4_documents(max_chars: int) -> Iterable[str]:
    stream = load_hub_dataset("allenai/c4", "use the embedded corpus or a local file", "en", split="validation",
                              streaming=True)
    try:
        yield from (row["text"][:max_chars] for row in stream)
    except Exception as exc:  # the stream fetches as it goes
        raise ExplorerError(f"C4 stopped streaming ({type(exc).__name__}): use the embedded corpus or a local file.") from exc


def documents(source: str, max_chars: int = MAX_DOC_CHARS) -> Iterable[str]:
    """All documents of a source, in a fixed order, each cut to `max_chars` characters."""
    if source == EMBEDDED:
        return _embedded_documents(max_chars)
    if source == C4:
        return _c4_documents(max_chars)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ExplorerError(f"Text file not found: {path}.")
    readers = {".txt": _txt_documents, ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ExplorerError(f"Unsupported text file type '{path.suffix}': use .txt, .jsonl or .parquet.")
    if reader is _txt_documents:
        check_text_file(path)
    return reader(path, max_chars)


def split_documents(source: str, split: Split, max_chars: int = MAX_DOC_CHARS) -> Iterable[str]:
    """Every tenth distinct document is held out; the rest calibrate and heal. Exact repeats
    are skipped (the embedded corpus has seven), else one text could land in both splits."""
    held = split == "heldout"
    seen: set[bytes] = set()
    for doc in documents(source, max_chars):
        digest = hashlib.sha1(doc.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        if (len(seen) % HELDOUT_EVERY == 0) == held:
            yield doc


def source_fingerprint(source: str) -> str:
    if source in (EMBEDDED, C4):
        return source
    path = Path(source).expanduser()
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def check_settings(samples: int, seq_len: int, batch_size: int = 1) -> None:
    """Reject impossible settings before any model is loaded."""
    if samples < 1:
        raise ExplorerError("Number of samples must be at least 1.")
    if seq_len < 2:
        raise ExplorerError("Sequence length must be at least 2 tokens.")
    if batch_size < 1:
        raise ExplorerError("Batch size must be at least 1.")


def make_samples(tokenizer, source: str, samples: int, seq_len: int, split: Split = "train") -> Samples:
    """Tokenize documents (default special tokens), truncate to `seq_len`, keep those of at
    least 16 tokens, and take the first `samples` of them: deterministic, so results cache."""
    check_settings(samples, seq_len)
    kept: list[list[int]] = []
    docs = split_documents(source, split, max(seq_len * CHARS_PER_TOKEN, 1024))
    for doc in docs:
        ids = tokenizer(doc, truncation=True, max_length=seq_len)["input_ids"]
        if len(ids) >= min(MIN_TOKENS, seq_len):
            kept.append(ids)
            if len(kept) == samples:
                break
    if not kept:
        raise ExplorerError(f"No usable text in {source}: need documents of at least {min(MIN_TOKENS, seq_len)} tokens.")
    key = f"{source_fingerprint(source)}|{split}|{samples}|{seq_len}|{len(kept)}"
    return Samples(kept, hashlib.sha1(key.encode()).hexdigest()[:16])


def cut_bytes(text: str, limit: int) -> str:
    """The longest start of `text` whose UTF-8 form fits in `limit` bytes, never half a character."""
    return text.encode()[:max(limit, 0)].decode("utf-8", errors="ignore")


def save_upload(name: str, stream: BinaryIO, folder: Path) -> Path:
    """Save an uploaded file under `folder`, named by its content hash (so re-runs reuse the file
    and its unchanged mtime keeps cache keys stable) plus its name, cut so the whole name fits the
    file system's 255 bytes (UTF-8: a CJK character takes 3, an emoji 4) with its suffix kept.
    Copied in pieces, never as a second whole copy in memory."""
    suffix = cut_bytes(Path(name).suffix, 16)
    stem = Path(Path(name).name).stem
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1()
    stream.seek(0)
    for piece in iter(lambda: stream.read(READ_PIECE), b""):
        digest.update(piece)
    prefix = f"{digest.hexdigest()[:12]}-"
    path = folder / f"{prefix}{cut_bytes(stem, UPLOAD_NAME_BYTES - len(prefix) - len(suffix.encode()))}{suffix}"
    if path.exists():
        return path
    partial = path.with_name(path.name + ".part")
    try:
        stream.seek(0)
        with open(partial, "wb") as out:
            shutil.copyfileobj(stream, out, READ_PIECE)
        partial.rename(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ExplorerError(f"Could not save the upload {name[:60]} in {folder} ({exc.strerror or exc}): "
                            "free some disk space or check EXPLORER_HOME.") from exc
    return path


def batches(items: list, size: int) -> Iterable[list]:
    check_settings(1, 2, size)
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def pad_batch(ids: list[list[int]], pad_id: int):
    """Right-pad to the longest sample. Right padding leaves causal attention over the real
    tokens untouched, so a sample's hidden states equal those it has alone."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return input_ids, mask
