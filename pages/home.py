import streamlit as st

st.title("✂️ Layer-Pruning Explorer")
st.markdown(
    """
Reproduce and explore *The Unreasonable Ineffectiveness of the Deeper Layers*
(Gromov, Tirumala, Shapourian, Glorioso, Roberts — arXiv 2403.17887, ICLR 2025) on any causal LM.

1. **Similarity heatmap** — run calibration text through a model and see the angular distance
   d(x<sup>l</sup>, x<sup>l+n</sup>) between the residual stream entering layer *l* and layer *l+n*,
   for every *l* and block size *n*. Click a cell to pick the block to prune.
""",
    unsafe_allow_html=True,
)
