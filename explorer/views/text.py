"""User-given text (model names, file names, labels, a failed run's error) as plain text inside the
markdown every Streamlit caption, message and label renders.

Streamlit renders markdown (GitHub-flavoured, with emoji shortcodes, colour directives and LaTeX)
in st.markdown, st.caption, st.info/success/warning/error, toasts and widget labels: a model named
`[notes](https://evil.example) ![](https://evil.example/track.png)` would show every visitor a
link and fetch a remote image. CommonMark lets any ASCII punctuation be escaped with a backslash,
which renders as the character itself, so escaping all of it leaves no markdown, no HTML and no
directive; line breaks become spaces. GitHub's autolinks (a bare `https://...`, `www.` or e-mail
address) are found in the text after escapes are resolved, so an invisible word joiner (U+2060) is
put inside each: the text reads the same, and no link is made.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)")  # where GFM's autolink literals would start
JOINER = "\u2060"  # WORD JOINER: invisible, and not a character any autolink pattern accepts


def plain(text: object) -> str:
    """`text` escaped so Streamlit's markdown shows it character for character, on one line."""
    return _PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(JOINER, " ".join(str(text).split())))
