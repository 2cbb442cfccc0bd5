"""Parsing a model response into an action: a plan and exactly one python block (or a spec).

For thinking models the block is taken from outside `<think>...</think>`. A response cut off
at the length limit, one with no block or several, or an unterminated block is invalid with
the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rollout.env.spec import SpecError, parse_spec

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*$", re.MULTILINE)
PYTHON_TAGS = ("python", "py", "python3", "")


@dataclass(frozen=True)
class Action:
    """A parsed response: valid with plan and code, or invalid with the reason."""

    valid: bool
    plan: str = ""
    code: str = ""
    reason: str = ""


def strip_thinking(text: str) -> tuple[str | None, str]:
    """The text outside <think>...</think>, or (None, reason) for an unterminated block."""
    if "</think>" in text:
        text = text[text.rindex("</think>") + len("</think>"):]
    elif "<think>" in text:
        return None, "unterminated <think> block"
    return text, ""


def find_blocks(text: str) -> tuple[list[tuple[str, int, int, int, int]], str]:
    """Fenced blocks as (tag, content start, content end, fence start, fence end), or an error.

    As in CommonMark, a fence with an info string cannot close a block: it is content."""
    blocks, open_tag, open_end, fence_start = [], None, 0, 0
    for m in _FENCE.finditer(text):
        if open_tag is None:
            open_tag, open_end, fence_start = m.group(1).lower(), m.end(), m.start()
        else:
            if m.group(1):
                continue
            blocks.append((open_tag, open_end, m.start(), fence_start, m.end()))
            open_tag = None
    if open_tag is not None:
        return blocks, "unterminated code block (no closing ```)"
    return blocks, ""


def _answer_body(text: str, truncated: bool) -> tuple[str | None, str]:
    """The response outside any thinking, or None and why (cut off, unclosed thinking)."""
    if truncated:
        return None, "response cut off at the length limit"
    return strip_thinking(text)


def parse_code_response(text: str, truncated: bool = False) -> Action:
    """A plan and exactly one python block; see the module docstring."""
    body, reason = _answer_body(text, truncated)
    if body is None:
        return Action(False, reason=reason)
    blocks, reason = find_blocks(body)
    if reason:
        return Action(False, reason=reason)
    python = [b for b in blocks if b[0] in PYTHON_TAGS]
    if not python:
        return Action(False, reason="no ```python code block in the response")
    if len(python) > 1:
        return Action(False, reason=f"{len(python)} python code blocks; exactly one is required")
    _, start, end, outer_start, outer_end = python[0]
    code = body[start:end].strip("\n")
    if not code.strip():
        return Action(False, reason="the python code block is empty")
    plan = (body[:outer_start] + body[outer_end:]).strip()
    return Action(True, plan=plan, code=code + "\n")


def format_response(plan: str, code: str) -> str:
    """A well-formed response: the plan, then the code in one python block (parses back exactly)."""
    return f"{plan.strip()}\n\n```python\n{code.strip(chr(10))}\n```\n"


def parse_spec_response(text: str, truncated: bool = False) -> Action:
    """A tiny model's spec (first non-empty line after any thinking); `code` holds the spec."""
    body, reason = _answer_body(text, truncated)
    if body is None:
        return Action(False, reason=reason)
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    if not lines:
        return Action(False, reason="empty response: expected a spec like 'model=gbm max_depth=4'")
    try:
        spec = parse_spec(lines[0])
    except SpecError as exc:
        return Action(False, reason=f"invalid spec: {exc}")
    return Action(True, plan="\n".join(lines[1:]), code=spec.to_string())
