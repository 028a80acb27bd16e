"""Layer-Pruning Explorer: reproduce 'The Unreasonable Ineffectiveness of the Deeper Layers' in a browser.

This is the home page; Streamlit finds the other pages in `pages/`. Pages only draw and
dispatch; everything they compute lives in `explorer/`.
"""

import streamlit as st

from pages import VISITOR_KEY, page_setup, visitor

page_setup("Home")
st.title("✂️ Layer-Pruning Explorer")
st.markdown(
    """
Reproduce and explore *The Unreasonable Ineffectiveness of the Deeper Layers*
(Gromov, Tirumala, Shapourian, Glorioso, Roberts — arXiv 2403.17887, ICLR 2025) on any causal LM.

1. **Similarity heatmap**: run calibration text through a model and see the angular distance
   d(x<sup>l</sup>, x<sup>l+n</sup>) = arccos(cos-sim)/π between the residual stream entering layer *l*
   and entering layer *l+n* (last token, averaged over samples) for every *l* and block size *n*.
   The minimum of each row is the block the paper prunes; click a cell to pick a block.
2. **Prune & heal**: remove the block, check what it did (loss, QA accuracy, a generation), then heal
   with LoRA/QLoRA in the background while validation loss and accuracy are plotted live.
3. **Phase-transition sweep**: drop more and more layers with each strategy (similarity, simple,
   top-cut) and watch QA accuracy collapse sharply while the loss rises smoothly.
4. **Metric comparison**: last-token vs all-token angular distance, ShortGPT's Block Influence and
   the measured loss increase: which block would each prune, and do they agree?
5. **Runs**: every run is kept in SQLite; compare, delete and export them.

Start with the embedded default model (SmolLM2-135M-Instruct, works offline) or enter a
Hugging Face id, a local folder or a `.gguf` file in the sidebar of any page.
""",
    unsafe_allow_html=True,
)
st.page_link("pages/similarity.py", label="Start with the similarity heatmap", icon="🗺️",
             query_params={VISITOR_KEY: visitor()})
