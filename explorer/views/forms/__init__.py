"""Page forms' state, computed without Streamlit: which widget keys a page's form has, the values
that make a form show a preset or a saved run, and what a page keeps of the result it shows.
The settings themselves (SweepSettings, HealConfig, ...) never know about widgets; the pages
read these tables and functions, and tests check them without a browser."""
