"""Layer-Pruning Explorer: reproduce 'The Unreasonable Ineffectiveness of the Deeper Layers' in a browser.

Pages only draw and dispatch; everything they compute lives in `explorer/`.
"""

import streamlit as st

st.set_page_config(page_title="Layer-Pruning Explorer", page_icon="✂️", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/similarity.py", title="Similarity heatmap", icon="🗺️", url_path="similarity"),
    st.Page("pages/prune_heal.py", title="Prune & heal", icon="🩹", url_path="prune-heal"),
    st.Page("pages/sweep.py", title="Phase-transition sweep", icon="📉", url_path="sweep"),
    st.Page("pages/metrics.py", title="Metric comparison", icon="⚖️", url_path="metrics"),
    st.Page("pages/runs.py", title="Runs", icon="🗂️", url_path="runs"),
]

st.navigation(PAGES).run()
