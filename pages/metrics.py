"""Metric comparison: which block would each pruning metric drop for a block size n, and how
well do the metrics' rankings of the candidate blocks agree?"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer.analysis.metrics import METRICS, MetricScores
from explorer.analysis.strategies import Context, choose_layers
from explorer.lm.blocks import Block, default_size
from explorer.lm.models import LoadedModel
from explorer.state.cache import brute_force_run, cached_brute_force, cached_scores
from explorer.views.figures.metrics import correlation_figure, influence_figure, metrics_figure, metrics_frame
from explorer.views.progress import estimate_brute_force, estimate_text, machine_load
from pages import check_text, get_store, show_page, user_errors, visitor
from pages.panels.model import open_page
from pages.panels.progress import steady_progress

SCORES_KEY = "metric_scores"  # {"fingerprint", "run_id", "scores" (json), "settings"}


def text_settings() -> dict:
    left, a, b, c = st.columns([2, 1, 1, 1])
    return {
        "source": left.text_input("Calibration text", "embedded", key="met_source",
                                  help="'embedded' (offline news corpus), 'c4' (online) or a .txt/.jsonl/.parquet path"),
        "samples": int(a.number_input("Samples", 1, 4096, 16, key="met_samples")),
        "seq_len": int(b.number_input("Tokens per sample", 2, 8192, 128, step=64, key="met_seq_len")),
        "batch_size": int(c.number_input("Batch size", 1, 512, 8, key="met_batch")),
    }


def compute(loaded: LoadedModel, settings: dict) -> None:
    check_text(settings["source"])
    with steady_progress("One forward pass per batch…") as update:
        run_id, scores, _ = cached_scores(loaded, store=get_store(), **settings,
                                          progress=lambda done, total: update(done / total, f"{done} / {total} samples"))
    get_store().add_visitor(run_id, visitor())
    st.session_state[SCORES_KEY] = {"fingerprint": loaded.fingerprint, "run_id": run_id, "scores": scores.to_json(), "settings": settings}


def attach_brute_force(loaded: LoadedModel, scores: MetricScores, settings: dict, n: int, measure: bool) -> None:
    """Add the brute-force losses for n: from the store when measured before, else only when asked."""
    store = get_store()
    cached = brute_force_run(store, loaded, n, settings["source"], settings["samples"], settings["seq_len"])
    if cached is None and not measure:
        return
    if cached is None:
        with steady_progress("Pruning each block and measuring the held-out loss…") as update:
            run_id, result, _ = cached_brute_force(loaded, n, store=store, **settings,
                                                   progress=lambda done, total: update(done / total, f"block {done} / {total}"))
        store.add_visitor(run_id, visitor())
    else:
        result = cached.result
    scores.brute_force = result


def choices_table(scores: MetricScores, n: int) -> pd.DataFrame:
    values = scores.scores(n)
    return pd.DataFrame(
        [{"metric": METRICS[name], "prunes": f"layer{'s' if n > 1 else ''} {Block(start, n, scores.num_layers).span}", "score": values[name][start]} for name, start in scores.choices(n).items()]
    )


def show(loaded: LoadedModel, scores: MetricScores, settings: dict) -> None:
    n = st.slider("Block size n (layers to drop)", 1, scores.num_layers - 1, default_size(scores.num_layers), key="met_n")
    measure = st.button(f"Measure the brute force for n = {n} ({scores.num_layers - n + 1} prunes + loss passes)", key="met_brute")
    st.caption(estimate_text(estimate_brute_force(get_store(), loaded.name, scores.num_layers - n + 1, settings["samples"],
                                                  settings["seq_len"]), "brute force", *machine_load()))
    with user_errors():
        attach_brute_force(loaded, scores, settings, n, measure)
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(metrics_figure(scores, n), key="met_lines")
    with right:
        st.markdown(f"**Block each metric would drop (n = {n})**")
        st.dataframe(choices_table(scores, n), hide_index=True, key="met_choices")
        st.markdown("**Spearman rank correlation of the candidate blocks' scores**")
        st.plotly_chart(correlation_figure(scores, n), key="met_corr", config={"displayModeBar": False})
        shortgpt = choose_layers("block-influence", n, Context(scores.num_layers, influence=scores.layer_influence))
        st.caption(f"ShortGPT itself drops the {n} lowest-BI layers wherever they are (the block-influence strategy, "
                   f"keeping the final layer): {shortgpt.span}. Here every metric "
                   "scores the same contiguous blocks [l, l+n) (BI summed over the block) so their choices compare. "
                   f"Scores from {scores.samples} samples, {scores.tokens} tokens.")
    st.plotly_chart(influence_figure(scores), key="met_influence")
    st.download_button("Scores for this n (CSV)", metrics_frame(scores, n).to_csv(index=False), f"metrics-n{n}.csv",
                       "text/csv", key="met_csv", on_click="ignore")


def main() -> None:
    opened = open_page(
        "⚖️ Metric comparison",
        "Four ways to score the block [l, l+n): the paper's **angular distance on the last token**, the same "
        "**averaged over all tokens**, ShortGPT's **Block Influence** (1 − cos between a layer's input and output, "
        "summed over the block), and the **measured loss increase** when the block is removed (brute force). "
        "Lower = safer to drop. The first three come from one forward pass.")
    if opened is None:
        return
    loaded = opened[1]
    settings = text_settings()
    if st.button("Compute metrics", type="primary", key="met_run"):
        with user_errors():
            compute(loaded, settings)
    session = st.session_state.get(SCORES_KEY)
    if session is None or session["fingerprint"] != loaded.fingerprint:
        st.info("Compute the metrics to compare them (results are saved and reused).")
        return
    show(loaded, MetricScores.from_json(session["scores"]), session["settings"])


show_page("Metric comparison", main)
