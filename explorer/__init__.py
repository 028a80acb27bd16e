"""Layer-Pruning Explorer backend: no Streamlit imports live here, so the CLI and tests use it directly."""
