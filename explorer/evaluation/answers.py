"""How a generated answer is read and compared: normalization for exact match, and extraction of a
number (GSM8K style) or of an answer letter (MMLU by generation). Pure functions on text, so every
generation task scores the same way and the rules are tested against hand-written cases
(tests/test_answers.py).

Normalized exact match is SQuAD's (Rajpurkar et al. 2016, the `normalize_answer` of its official
evaluation script, which lm-eval's SQuAD and TriviaQA metrics also use): lowercase, drop ASCII
punctuation, drop the articles "a", "an" and "the", and collapse whitespace. So " Paris." matches
"Paris" and "The Hague" matches "Hague", while "Paris, France" does not match "Paris": the answer
must be the whole generated answer line, not somewhere inside it.
"""

from __future__ import annotations

import re
import string

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)
# GSM8K's final answer line and lm-eval's strict-match filter for it ("#### 42"); otherwise the
# last number in the text (lm-eval's flexible-extract reads the last number too).
FINAL_ANSWER = re.compile(r"####\s*(-?[$0-9.,]*[0-9])")
NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")
# An answer letter at the start of the answer, alone or closed by punctuation: "B", " B.", "(B)",
# "B) Paris", "B: Paris"; not the article in "A dog".
LETTER = re.compile(r"\s*\(?([A-D])(?:[.):]|\s*$)")


def normalize(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize(prediction) == normalize(gold)


def canonical_number(text: str) -> str:
    """'1,234' -> '1234', '$5' -> '5', '7.50' -> '7.5', '8.' -> '8', '-3.0' -> '-3'; '' if no number."""
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return ""
    if value.is_integer():
        return str(int(value))
    return repr(value)


def extract_number(text: str) -> str:
    """The answer of a GSM8K-style solution: the number after the first "####", else the last number
    in the text, in canonical form; '' when there is none."""
    if found := FINAL_ANSWER.search(text):
        return canonical_number(found.group(1))
    numbers = NUMBER.findall(text)
    return canonical_number(numbers[-1]) if numbers else ""


def extract_letter(text: str) -> str:
    """The answer letter A-D a generation starts with ("B", " (C)", "D. Paris", not "A dog"), else the
    normalized text itself (so a wrong answer is kept, and never equals a letter)."""
    found = LETTER.match(text)
    return found.group(1) if found else normalize(text)
