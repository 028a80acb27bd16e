"""Answer extraction and normalization (explorer.evaluation.answers) against hand-written cases."""

from __future__ import annotations

import pytest

from explorer.evaluation.answers import canonical_number, exact_match, extract_letter, extract_number, normalize


@pytest.mark.parametrize(("text", "expected"), [
    (" Paris", "paris"),
    ("Paris.", "paris"),
    ("  The   Hague ", "hague"),
    ("an apple a day", "apple day"),
    ("St. John's", "st johns"),
    ("Washington, D.C.", "washington dc"),
    ("Saint-Barthélemy", "saintbarthélemy"),  # ASCII punctuation only, as SQuAD
    ("Theodore", "theodore"),  # "the" only as a word
    ("", ""),
])
def test_normalize_is_squads(text, expected):
    assert normalize(text) == expected


def test_exact_match_needs_the_whole_answer():
    assert exact_match(" Paris.", "Paris")
    assert exact_match("the Netherlands", "Netherlands")
    assert not exact_match("Paris, France", "Paris")
    assert not exact_match("Washington D.C.", "Washington")


@pytest.mark.parametrize(("text", "expected"), [
    ("Ada has 2 + 6 = 8 apples.\n#### 8", "8"),
    ("#### 1,234", "1234"),
    ("####42", "42"),
    ("#### -3", "-3"),
    ("#### $5", "5"),
    ("The answer is 7.50.", "7.5"),
    ("She has 3 apples, then 12.", "12"),  # no '####': the last number
    ("#### 4\nand 9 more", "4"),  # '####' wins over a later number
    ("It costs 8.", "8"),
    ("no number here", ""),
    ("1.2.3", ""),
])
def test_extract_number_reads_gsm8k_answers(text, expected):
    assert extract_number(text) == expected


def test_canonical_number():
    assert canonical_number("3.0") == "3"
    assert canonical_number("-0.25") == "-0.25"
    assert canonical_number("abc") == ""


@pytest.mark.parametrize(("text", "expected"), [
    (" B", "B"),
    ("B.", "B"),
    (" (C)", "C"),
    ("D. a banking service.", "D"),
    ("A) yes", "A"),
    (" A dog", "dog"),  # the article, not an answer letter
    (" b", "b"),  # lowercase is not a letter answer
    (" E", "e"),
    (" Because", "because"),
    ("", ""),
])
def test_extract_letter(text, expected):
    assert extract_letter(text) == expected
