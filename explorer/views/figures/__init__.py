"""Every plotly figure the app draws, one module per page's plots: `similarity` (heatmap, best
distance per n, stability), `sweep`, `metrics`, `heal` (the live healing plot), `classify`, `runs`
(a run's figures, two runs compared); `style` holds what they share and `export` writes PNG/HTML."""
