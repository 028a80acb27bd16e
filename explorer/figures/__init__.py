"""Every plotly figure the app draws, one module per page's plots."""
