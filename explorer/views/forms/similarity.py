"""The Similarity page's form: its calibration-source choices, the widget values of a saved run, and
the result a session keeps on screen."""

from __future__ import annotations

from pathlib import Path

from explorer.analysis.similarity import SimilarityResult
from explorer.lm.data import C4, EMBEDDED

# The similarity page's calibration-source radio: label -> source ("upload"/"path" ask for a file).
SOURCES = {
    "Embedded corpus (offline)": EMBEDDED,
    "C4 (online, streamed)": C4,
    "Upload a file": "upload",
    "Local file path": "path",
}


def similarity_widgets(settings: dict, uploads: Path | None = None) -> dict:
    """The similarity form's widget values for a saved run's settings, so the form matches what it
    shows; an uploaded file (under `uploads`) selects the upload choice, never its server path."""
    label = next((name for name, value in SOURCES.items() if value == settings["source"]), "Local file path")
    if uploads is not None and Path(settings["source"]).expanduser().resolve().is_relative_to(uploads.resolve()):
        label = "Upload a file"
    values = {"sim_samples": settings["samples"], "sim_seq_len": settings["seq_len"], "sim_source": label}
    values.update({"sim_batch": settings["batch_size"]} if "batch_size" in settings else {})
    return {**values, "sim_path": settings["source"]} if label == "Local file path" else values


def shown_result(run_id: int, result: SimilarityResult, fingerprint: str, from_cache: bool, settings: dict) -> dict:
    """What the page keeps in its session for the result it shows (JSON-able, survives reruns)."""
    return {
        "run_id": run_id, "result": result.to_json(), "fingerprint": fingerprint, "from_cache": from_cache,
        "settings": {"source": settings["source"], "samples": int(settings["samples"]), "seq_len": int(settings["seq_len"])},
    }


def kept_result(session: dict | None, fingerprint: str) -> tuple[int, SimilarityResult, bool, dict] | None:
    """The result a session keeps (see `shown_result`) when it is this model's, else None."""
    if session is None or session["fingerprint"] != fingerprint:
        return None
    return session["run_id"], SimilarityResult.from_json(session["result"]), session["from_cache"], session["settings"]
