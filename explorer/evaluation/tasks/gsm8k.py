"""GSM8K (Cobbe et al. 2021): grade-school math word problems answered by generation, from
`openai/gsm8k` on the Hugging Face hub or from a local JSONL in its format (one
{"question": ..., "answer": "...working...\\n#### 42"} per line).

The prompt, stop strings and answer extraction are lm-eval's `gsm8k` task's: "Question: ...\\nAnswer:",
`shots` solved problems before it (default 5), greedy, stop at "Question:" or the end of sequence,
at most 256 new tokens; the answer is the number after "####", else the last number
(explorer.evaluation.answers.extract_number; lm-eval reports the two as strict-match and
flexible-extract). Demonstrations are the first `shots` problems of the train split (lm-eval draws
them at random with a fixed seed), or of the local file, whose remaining lines are the questions.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from explorer.core.errors import ExplorerError
from explorer.evaluation.answers import FINAL_ANSWER, extract_number
from explorer.evaluation.tasks import register
from explorer.evaluation.tasks.arith import demonstration, gsm8k_prompt
from explorer.evaluation.tasks.generative import GenerationTask, Prompted
from explorer.lm.data import jsonl_records, load_hub_dataset
from explorer.lm.generate import Decoding

HUB_DATASET = "openai/gsm8k"
LOCAL = "pass a local GSM8K JSONL (question and answer with '#### N' per line) as gsm8k_file (--option gsm8k_file=PATH)"
DEFAULT_SHOTS = 5


def read_gsm8k(path: str | Path) -> list[dict]:
    """The problems of a GSM8K JSONL, checked line by line: a question and an answer ending in '#### N'."""
    records = jsonl_records(path, "GSM8K", ("question", "answer"))
    if missing := next((where for where, row in records if not FINAL_ANSWER.search(row["answer"])), None):
        raise ExplorerError(f"{missing}: the answer has no final line '#### N' (GSM8K's format).")
    return [{"question": row["question"], "answer": row["answer"]} for _, row in records]


class GSM8KTask(GenerationTask):
    name = "gsm8k"
    chance = 0.0
    decoding = Decoding(max_new_tokens=256, until=("Question:", "</s>", "<|im_end|>"))  # lm-eval's gsm8k
    answer = staticmethod(extract_number)

    def __init__(self, gsm8k_file: str | Path | None = None, shots: int = DEFAULT_SHOTS):
        if not 0 <= shots <= 8:
            raise ExplorerError(f"GSM8K shots must be between 0 and 8, got {shots}.")
        self.shots = shots
        if gsm8k_file is None:
            test = [dict(row) for row in load_hub_dataset(HUB_DATASET, LOCAL, "main", split="test")]
            train = [dict(row) for row in load_hub_dataset(HUB_DATASET, LOCAL, "main", split="train")][:shots]
            where, part = f"{HUB_DATASET} via datasets {importlib.metadata.version('datasets')}", "test"
        else:
            rows = read_gsm8k(gsm8k_file)
            if len(rows) <= shots:
                raise ExplorerError(f"{gsm8k_file} holds {len(rows)} problems: {shots} are demonstrations, so give more "
                                    "problems or fewer shots (--shots).")
            train, test = rows[:shots], rows[shots:]
            where, part = str(Path(gsm8k_file).expanduser()), "local"
        prefix = "".join(demonstration(row["question"], row["answer"]) for row in train)
        self.prompted = [Prompted(f"gsm8k/{part}/{i}", prefix + gsm8k_prompt(row["question"]), row["answer"])
                         for i, row in enumerate(test)]
        self.source = f"GSM8K ({where}, {len(test)} questions, {shots}-shot, answer after '####' else the last number)"


register(GSM8KTask.name, GSM8KTask, generative=True)
