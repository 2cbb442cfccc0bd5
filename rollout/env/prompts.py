"""Turning a state into the agent's prompt: draft, debug or improve, within a token budget.

The prompt holds the task description, a preview of the public data, the previous code and
its feedback tail (including the validation metric the script printed on a split of the
public training data). It never holds the hidden score q or anything from private/.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from rollout.env.spec import grammar_text
from rollout.env.state import State
from rollout.env.tasks import Task

SYSTEM = """You are an expert machine-learning engineer solving a Kaggle-style task by writing one complete Python script.
Rules for the script:
- The working directory holds the public data in `data/` (read-only): train.csv, test.csv, sample_submission.csv.
- Write the predictions for test.csv to `submission.csv` in the working directory, in the format of sample_submission.csv.
- Hold out part of train.csv, and print your score on it as a line `validation_metric: <number>`.
- Only numpy, pandas and scikit-learn are available; there is no internet access; keep it single-threaded and fast.
Answer with a short plan, then exactly one ```python code block holding the whole script."""

INSTRUCTIONS = {
    "draft": "Write a first complete solution.",
    "debug": "The previous solution failed or made no valid submission. Fix it; keep what worked.",
    "improve": "The previous solution made a valid submission. Improve its score on the hidden test set "
               "(one focused change is usually best).",
}


def approx_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks), for when no tokenizer is given."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass(frozen=True)
class Prompt:
    """A built prompt: system and user text, the operator, and whether parts were shortened."""

    system: str
    user: str
    operator: str
    truncated: bool = False

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    def text(self) -> str:
        return f"{self.system}\n\n{self.user}"


@functools.lru_cache(maxsize=256)
def _preview(train_path: str, mtime: float, rows: int) -> str:
    head = pd.read_csv(train_path, nrows=rows)
    with open(train_path, "rb") as f:
        n_rows = sum(1 for _ in f) - 1
    dtypes = ", ".join(f"{c} ({'num' if pd.api.types.is_numeric_dtype(t) else 'str'})"
                       for c, t in head.dtypes.items())
    return (f"train.csv: {n_rows} rows, {head.shape[1]} columns: {dtypes}\n"
            f"First rows:\n{head.to_csv(index=False, float_format='%.4g')}")


def data_preview(task: Task, rows: int = 5) -> str:
    """Shape, columns and the first rows of the public train.csv (never the private answers)."""
    path = task.public_dir / "train.csv"
    return _preview(str(path), path.stat().st_mtime, rows)


def _shrink(text: str, n: int, keep: str) -> str:
    if len(text) <= n:
        return text
    mark = "\n...[truncated]...\n"
    if keep == "head":
        return text[:n] + mark
    if keep == "tail":
        return mark + text[-n:]
    return text[: n // 2] + mark + text[-(n - n // 2):]


def _sections(state: State, task: Task) -> list[list]:
    """[title, text, keep policy, min chars, allowed chars] per section, in prompt order."""
    sections = [["Task", task.description.strip(), "head", 400], ["Data", data_preview(task), "head", 300]]
    if state.code is not None:
        sections.append(["Previous solution", f"```python\n{state.code.rstrip()}\n```", "middle", 600])
        fb = state.feedback
        if fb is not None:
            metric = "not printed" if fb.validation_metric is None else f"{fb.validation_metric:.6g}"
            status = "valid submission" if fb.valid else f"no valid submission: {fb.reason}"
            sections.append(["Execution feedback", f"Status: {status}\nValidation metric (printed by the script): "
                             f"{metric}\nRuntime: {fb.runtime_s:.1f} s\nOutput tail:\n{fb.tail() or '(no output)'}",
                             "tail", 300])
    return [s + [len(s[1])] for s in sections]


def build_prompt(state: State, task: Task, budget_tokens: int = 6000,
                 count_tokens: Callable[[str], int] = approx_tokens) -> Prompt:
    """The prompt for `state`'s operator, shortened section by section to fit `budget_tokens`."""
    op = state.operator
    sections = _sections(state, task)
    instructions = f"# Instructions\n{INSTRUCTIONS[op]}"

    def render() -> str:
        return "\n\n".join([f"# {t}\n{_shrink(body, allowed, keep)}" for t, body, keep, _, allowed in sections]
                            + [instructions])

    truncated = False
    user = render()
    system_tokens = count_tokens(SYSTEM)
    while (used := system_tokens + count_tokens(user)) > budget_tokens:
        shrinkable = [s for s in sections if s[4] > s[3]]
        if not shrinkable:
            raise ValueError(f"token budget {budget_tokens} is too small for this prompt's fixed parts "
                             f"({used} tokens at the minimum)")
        longest = max(shrinkable, key=lambda s: s[4])
        # Cut the characters the excess tokens take at this prompt's own density (and a margin),
        # so that one or two counting rounds suffice; at least 10% per round.
        excess_chars = int((used - budget_tokens) * len(user) / max(used, 1) * 1.1) + 1
        longest[4] = max(longest[3], min(int(longest[4] * 0.9), longest[4] - excess_chars))
        truncated = True
        user = render()
    return Prompt(SYSTEM, user, op, truncated)


@functools.lru_cache(maxsize=256)
def _feature_counts(train_path: str, mtime: float, id_column: str, target: str) -> tuple[int, int]:
    train = pd.read_csv(train_path, nrows=200)
    features = [col for col in train.columns if col not in (id_column, target)]
    n_cat = sum(not pd.api.types.is_numeric_dtype(train[col]) for col in features)
    return len(features) - n_cat, n_cat


def spec_prompt(state: State, task: Task) -> str:
    """The compact prompt of the tiny-model spec mode (the previous spec is the state's code)."""
    c = task.config
    path = task.public_dir / "train.csv"
    n_num, n_cat = _feature_counts(str(path), path.stat().st_mtime, c.id_column, c.target_column)
    parts = [f"task {c.id} {c.kind} metric {c.metric} {c.direction}",
             f"features {n_num} numeric {n_cat} categorical", f"op {state.operator}"]
    if state.code is not None:
        parts.append(f"spec {state.code.strip().splitlines()[0] if state.code.strip() else ''}")
        fb = state.feedback
        if fb is not None:
            parts.append("status valid" if fb.valid else f"status invalid {fb.reason.split(':')[0]}")
            if fb.validation_metric is not None:
                parts.append(f"validation {fb.validation_metric:.4f}")
    return "\n".join(parts) + "\nnext spec:"


def spec_grammar_prompt() -> str:
    """The grammar text a spec-mode system prompt can carry."""
    return grammar_text()

