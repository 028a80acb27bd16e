"""Arithmetic word problems generated offline from a seed, in GSM8K's format: a question, and a
solution whose last line is "#### <number>". They are what GSM8K measures (reading a short story,
doing the arithmetic, writing the number) at a size a 135M model can sometimes solve, and they
need no download.

Four kinds, drawn in turn with small numbers: adding, taking away, multiplying (boxes of equal
size), and a two-step add-then-take-away. `arith` asks for the answer line only ("#### 12");
`arith-cot` shows the working first (a chain of thought: "Ada has 7 + 5 = 12 marbles." then
"#### 12"), in the demonstrations and so in what the model writes. Both extract the answer as GSM8K
is scored (explorer.evaluation.answers.extract_number: the number after "####", else the last
number) and compare it exactly. The same seed gives the same problems on every machine.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable

from explorer.core.errors import ExplorerError
from explorer.evaluation.answers import extract_number
from explorer.evaluation.tasks import register
from explorer.evaluation.tasks.generative import GenerationTask, Prompted
from explorer.lm.generate import Decoding

QUESTIONS = 1000  # problems a task holds; a limit takes the first ones
DEFAULT_SHOTS = 4  # one solved problem of each kind
NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena")
ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "stamps", "cookies", "shells", "cards")


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, the working (one sentence per step) and the answer."""

    id: str
    question: str
    steps: tuple[str, ...]
    answer: int

    def solution(self, cot: bool) -> str:
        """GSM8K's answer format: the working on its own lines (with a chain of thought), then "#### N"."""
        working = "".join(f"{step}\n" for step in self.steps) if cot else ""
        return f"{working}#### {self.answer}"


def _adding(rng: random.Random, name: str, friend: str, item: str) -> tuple[str, tuple[str, ...], int]:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return (f"{name} has {a} {item}. {friend} gives {name} {b} more. How many {item} does {name} have now?",
            (f"{name} has {a} + {b} = {a + b} {item}.",), a + b)


def _taking(rng: random.Random, name: str, friend: str, item: str) -> tuple[str, tuple[str, ...], int]:
    a = rng.randint(10, 30)
    b = rng.randint(2, a - 1)
    return (f"{name} has {a} {item} and gives {b} of them to {friend}. How many {item} does {name} have left?",
            (f"{name} has {a} - {b} = {a - b} {item} left.",), a - b)


def _multiplying(rng: random.Random, name: str, friend: str, item: str) -> tuple[str, tuple[str, ...], int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (f"{name} buys {a} boxes of {item} with {b} {item} in each box. How many {item} does {name} buy?",
            (f"{name} buys {a} * {b} = {a * b} {item}.",), a * b)


def _two_steps(rng: random.Random, name: str, friend: str, item: str) -> tuple[str, tuple[str, ...], int]:
    a, b = rng.randint(5, 20), rng.randint(2, 15)
    c = rng.randint(1, a + b - 1)
    return (f"{name} has {a} {item}, buys {b} more, and then gives {c} to {friend}. How many {item} does {name} have now?",
            (f"After buying, {name} has {a} + {b} = {a + b} {item}.", f"After giving, {name} has {a + b} - {c} = {a + b - c} {item}."),
            a + b - c)


KINDS: tuple[Callable[[random.Random, str, str, str], tuple[str, tuple[str, ...], int]], ...] = (
    _adding, _taking, _multiplying, _two_steps)


def problems(seed: int, count: int, stream: str = "questions") -> list[Problem]:
    """`count` problems of the four kinds in turn, from their own seeded random stream."""
    rng = random.Random(f"arith:{stream}:{seed}")
    made = []
    for i in range(count):
        name, friend = rng.sample(NAMES, 2)
        question, steps, answer = KINDS[i % len(KINDS)](rng, name, friend, rng.choice(ITEMS))
        made.append(Problem(f"arith/{stream}/{i}", question, steps, answer))
    return made


def gsm8k_prompt(question: str) -> str:
    """GSM8K's prompt in lm-eval (tasks/gsm8k: "Question: ...\\nAnswer:")."""
    return f"Question: {question}\nAnswer:"


def demonstration(question: str, solution: str) -> str:
    """A solved example as lm-eval writes it before the question (target after a space, then a blank line)."""
    return f"{gsm8k_prompt(question)} {solution}\n\n"


class ArithmeticTask(GenerationTask):
    chance = 0.0

    def __init__(self, cot: bool = False, seed: int = 0, shots: int = DEFAULT_SHOTS):
        if not 0 <= shots <= 32:
            raise ExplorerError(f"Arithmetic shots must be between 0 and 32, got {shots}.")
        self.cot, self.seed, self.shots = bool(cot), seed, shots
        self.name = "arith-cot" if self.cot else "arith"
        # a blank line ends an answer (demonstrations are separated by one), as does a new question
        self.decoding = Decoding(max_new_tokens=64 if self.cot else 16, until=("Question:", "\n\n"))
        prefix = "".join(demonstration(p.question, p.solution(self.cot)) for p in problems(seed, shots, "demonstrations"))
        self.prompted = [Prompted(p.id, prefix + gsm8k_prompt(p.question), p.solution(self.cot))
                         for p in problems(seed, QUESTIONS)]
        self.source = (f"arithmetic word problems generated with seed {seed} ({QUESTIONS} questions, {shots}-shot, "
                       f"{'chain of thought' if self.cot else 'answer only'}, GSM8K answer extraction)")

    answer = staticmethod(extract_number)


register("arith", functools.partial(ArithmeticTask, cot=False), generative=True)
register("arith-cot", functools.partial(ArithmeticTask, cot=True), generative=True)
