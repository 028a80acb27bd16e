"""What pages show, computed without Streamlit: previews, run listings, progress, figures."""
