"""States of the MLE environment and the child-state payload kept by the buffer.

A state is (task, current code or none, its execution feedback). Its hidden score `q` is
bookkeeping for reward, buffer and metrics; prompts never show it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

OPERATORS = ("draft", "debug", "improve")
_VALIDATION = re.compile(r"validation[_ ]metric\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)",
                         re.IGNORECASE)


def parse_validation_metric(stdout: str) -> float | None:
    """The last `validation_metric: <number>` line the script printed, if any."""
    found = _VALIDATION.findall(stdout)
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


@dataclass(frozen=True)
class Feedback:
    """What the agent may see of an execution (never the hidden score)."""

    valid: bool
    reason: str
    stdout_tail: str = ""
    stderr_tail: str = ""
    validation_metric: float | None = None
    runtime_s: float = 0.0

    def tail(self, n_chars: int = 2000) -> str:
        """stdout and stderr tails as one text, at most about `n_chars` long."""
        parts = []
        if self.stdout_tail.strip():
            parts.append("[stdout]\n" + self.stdout_tail.strip()[-n_chars:])
        if self.stderr_tail.strip():
            parts.append("[stderr]\n" + self.stderr_tail.strip()[-n_chars:])
        return "\n".join(parts)


@dataclass(frozen=True)
class State:
    """A node of the search: a root (no code) or a solution with its feedback and hidden q."""

    task_id: str
    code: str | None = None
    feedback: Feedback | None = None
    q: float = 0.0
    depth: int = 0

    @property
    def operator(self) -> str:
        """draft (no code), debug (failed or no valid submission), improve (valid code)."""
        if self.code is None:
            return "draft"
        if self.feedback is None or not self.feedback.valid:
            return "debug"
        return "improve"


def normalize_code(code: str) -> str:
    """Line endings unified, trailing spaces and blank edge lines dropped."""
    lines = [ln.rstrip() for ln in code.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def content_hash(task_id: str, code: str) -> int:
    """A stable 63-bit id of (task, normalized code): sha256, first 8 bytes, top bit cleared."""
    digest = hashlib.sha256(f"{task_id}\0{normalize_code(code)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class ChildPayload:
    """What the buffer stores for a child state: its code, feedback tail, hidden q and hash."""

    task_id: str
    code: str
    feedback_tail: str
    q: float
    content_hash: int
    valid: bool
    reason: str
    validation_metric: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ChildPayload":
        return cls(**data)

    def to_state(self, depth: int = 0) -> State:
        """The state this payload describes (the feedback tail goes back as stdout)."""
        fb = Feedback(self.valid, self.reason, self.feedback_tail, "", self.validation_metric)
        return State(self.task_id, self.code, fb, self.q, depth)
