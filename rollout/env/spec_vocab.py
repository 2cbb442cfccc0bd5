"""The tiny model's vocabulary: spec-mode prompts of every task and operator, and the spec grammar."""

from __future__ import annotations

from typing import Iterable

from rollout.env.prompts import spec_prompt
from rollout.env.spec import ESTIMATORS, grammar_text, grammar_words
from rollout.env.state import Feedback, State
from rollout.env.tasks import Task
from rollout.env.word_tokenizer import WordTokenizer

# Reasons as spec_prompt shortens them (text before the first colon).
SAMPLE_REASONS = ("timeout", "crashed", "out of memory", "no submission.csv was written (or it is empty)",
                  "invalid spec", "cpu time limit exceeded", "file size limit exceeded", "killed by signal SIGKILL")


def sample_states(task: Task) -> list[State]:
    """A root, failed states and valid states of `task`, covering what spec prompts can say."""
    spec = f"model={next(iter(ESTIMATORS))}"
    states = [State(task.id)]
    states += [State(task.id, spec, Feedback(False, reason)) for reason in SAMPLE_REASONS]
    states.append(State(task.id, spec, Feedback(True, "", validation_metric=0.5)))
    return states


def build_spec_tokenizer(tasks: Iterable[Task]) -> WordTokenizer:
    """A word tokenizer covering the spec prompts of `tasks` and every spec the grammar allows."""
    texts = [grammar_text()] + [spec_prompt(s, t) for t in tasks for s in sample_states(t)]
    return WordTokenizer.build(texts, extra=grammar_words())
