"""What a reader of a page sees in a markdown element: AppTest hands back the markdown source, in which
user-given text is backslash-escaped (explorer.views.text.plain); CommonMark shows each escaped
punctuation character as itself, and the invisible word joiners that stop autolinks show as nothing."""

import re


def seen(markdown: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def small_prune_page():
    """The Prune & heal page in-process (Streamlit AppTest), its evaluation made small (4 questions, 2
    held-out documents of 64 tokens) so a Prune takes seconds."""
    from streamlit.testing.v1 import AppTest  # deferred: only page tests need Streamlit's test runner

    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.switch_page("pages/prune_heal.py").run()
    at.number_input(key="ph_limit").set_value(4)
    at.number_input(key="ph_val").set_value(2)
    at.number_input(key="ph_seq").set_value(64)
    return at
