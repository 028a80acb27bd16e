"""What a reader of a page sees in a markdown element: AppTest hands back the markdown source, in which
user-given text is backslash-escaped (explorer.views.text.plain); CommonMark shows each escaped
punctuation character as itself, and the invisible word joiners that stop autolinks show as nothing."""

import re


def seen(markdown: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")
