"""Parts of pages: panels a page draws (a speed table, an export box, a generation pane), each in its
own module so every page and panel stays under 200 lines. Streamlit only lists `pages/*.py` as
pages, so nothing in this folder becomes a page of its own. Panels draw and dispatch only."""
