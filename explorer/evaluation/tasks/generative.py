"""Generation tasks: the model writes its answer, which is extracted, normalized and compared with
the gold answer (explorer.evaluation.answers), beside the likelihood tasks that only rank given
choices. Log-likelihood scoring flatters pruning: a pruned model can still rank "Paris" above three
other capitals long after it has stopped writing "Paris" (Minitron-4B-Depth keeps 90% of dense MMLU
but 35% of GSM8K, arXiv 2408.11796; Song et al. 2025, arXiv 2510.02091).

A task is a list of `Prompted` questions (id, full prompt, gold answer), a `Decoding` (stop strings,
token budget; greedy) and an `answer` rule that reads the prediction out of the generated text.
Scoring generates every prompt with explorer.lm.generate and keeps the text in each
`QuestionResult.output`. `write_lmeval_task` writes the same prompts as an lm-eval `generate_until`
task, so lm-eval's outputs can be compared with ours token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from explorer.evaluation.lmeval import lmeval_folder, template, write_config, write_jsonl
from explorer.evaluation.questions import QuestionResult, limited
from explorer.lm.generate import Decoding, generate
from explorer.lm.models import LoadedModel


@dataclass(frozen=True)
class Prompted:
    """One question as generation sees it: the whole prompt and the gold answer (as written)."""

    id: str
    prompt: str
    gold: str


class GenerationTask:
    """The scoring shared by every generation task; a subclass sets `name`, `source`, `chance`,
    `decoding`, `prompted` (all its questions, in order) and `answer` (text -> normalized prediction;
    the gold answer goes through the same rule)."""

    metric = "exact_match"
    name: str
    source: str
    chance: float
    decoding: Decoding
    prompted: list[Prompted]
    answer: Callable[[str], str]

    def selected(self, limit: int | None) -> list[Prompted]:
        return limited(self.prompted, limit)

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> list[QuestionResult]:
        questions = self.selected(limit)
        generations = generate(loaded, [q.prompt for q in questions], self.decoding, batch_size, progress)
        return [QuestionResult(q.id, self.answer(g.text), self.answer(q.gold), output=g.text)
                for q, g in zip(questions, generations)]

    def lmeval_name(self) -> str:
        return "explorer_" + self.name.replace("-", "_")

    def write_lmeval_task(self, limit: int | None = None, folder: Path | None = None) -> str:
        """This task's first `limit` questions as an lm-eval generate_until task (prompts as ours,
        greedy, the same stop strings and token budget); returns its lm-eval name."""
        folder = folder or lmeval_folder()
        task = self.lmeval_name()
        data = folder / task / f"{task}_test.jsonl"
        write_jsonl(data, [{"id": q.id, "prompt": q.prompt, "target": q.gold} for q in self.selected(limit)])
        kwargs = {"until": list(self.decoding.until), "max_gen_toks": self.decoding.max_new_tokens, "do_sample": False}
        config = {"task": task, **template("generate.yaml"), "dataset_kwargs": {"data_files": {"test": str(data)}},
                  "generation_kwargs": kwargs}
        return write_config(folder, config)
