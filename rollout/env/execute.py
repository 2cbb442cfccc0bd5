"""One environment step: run an action in a sandbox, grade outside it, compute the reward.

`execute` runs a script; `step` parses a model response first (code or spec mode). Both
return a StepResult holding the feedback the agent may see, the hidden score, the reward,
the success flag and the child-state payload for the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.env.graders import GradeResult, grade_bytes, invalid
from rollout.env.parsing import Action, parse_code_response, parse_spec_response
from rollout.env.reward import W_VALID, Reward, normalized_score, step_reward
from rollout.env.spec import SpecError, render_script
from rollout.env.state import ChildPayload, Feedback, content_hash, parse_validation_metric
from rollout.env.tasks import Task
from rollout.sandbox.base import ExecResult, Limits, Sandbox


@dataclass(frozen=True)
class StepResult:
    """Everything one step produced. `q` and `metric` are hidden from the agent."""

    task_id: str
    code: str
    valid: bool
    reason: str
    metric: float | None
    reward: Reward
    medal: str | None
    feedback: Feedback
    execution: ExecResult | None
    payload: ChildPayload | None

    @property
    def q(self) -> float:
        return self.reward.q

    def to_dict(self) -> dict:
        """The JSON-ready trace record (the `ace-jax exec` output)."""
        ex = self.execution
        return {"task": self.task_id, "valid": self.valid, "reason": self.reason, "metric": self.metric,
                "q": self.reward.q, "u": self.reward.u, "reward": self.reward.reward, "success": self.reward.success,
                "medal": self.medal, "validation_metric": self.feedback.validation_metric,
                "runtime": None if ex is None else round(ex.runtime_s, 4),
                "sandbox": None if ex is None else ex.sandbox,
                "stdout_tail": self.feedback.stdout_tail, "stderr_tail": self.feedback.stderr_tail}


def grade_execution(task: Task, ex: ExecResult) -> GradeResult:
    """Crashed / timed out / no submission / invalid submission / valid with a score."""
    failure = ex.failure_reason()
    if failure is not None:
        return invalid(failure)
    if ex.submission is None:
        return invalid("no submission.csv was written (or it is empty)")
    return grade_bytes(task, ex.submission)


def execute(task: Task, code: str, sandbox: Sandbox, *, slot: int = 0, limits: Limits = Limits(),
            parent_q: float = 0.0, w_valid: float = W_VALID, state_code: str | None = None) -> StepResult:
    """Run `code` on `task` in `sandbox`, grade it and compute the step's reward.

    `state_code` is what the child state records as its code (the spec in spec mode)."""
    ex = sandbox.run(code, task.public_dir, limits, slot)
    grade = grade_execution(task, ex)
    c = task.config
    q = normalized_score(grade.score, c.baseline_score, c.reference_score, c.direction) if grade.valid else None
    reward = step_reward(grade.valid, q, parent_q, w_valid)
    feedback = Feedback(grade.valid, grade.reason, ex.stdout_tail, ex.stderr_tail,
                        parse_validation_metric(ex.stdout_tail), ex.runtime_s)
    recorded = code if state_code is None else state_code
    payload = ChildPayload(task.id, recorded, feedback.tail(), reward.q, content_hash(task.id, recorded),
                           grade.valid, grade.reason, feedback.validation_metric)
    return StepResult(task.id, recorded, grade.valid, grade.reason, grade.score, reward,
                      task.medal(grade.score) if grade.valid else None, feedback, ex, payload)


def rejected(task: Task, action: Action) -> StepResult:
    """The result of a response that did not parse: nothing runs, reward 0, no child state."""
    fb = Feedback(False, action.reason)
    return StepResult(task.id, "", False, action.reason, None, step_reward(False, None), None, fb, None, None)


def step(task: Task, response: str, sandbox: Sandbox, *, mode: str = "code", truncated: bool = False,
         slot: int = 0, limits: Limits = Limits(), parent_q: float = 0.0, w_valid: float = W_VALID) -> StepResult:
    """Parse a model response (mode "code" or "spec") and execute it."""
    if mode not in ("code", "spec"):
        raise ValueError(f"mode must be 'code' or 'spec', got {mode!r}")
    action = (parse_code_response if mode == "code" else parse_spec_response)(response, truncated)
    if not action.valid:
        return rejected(task, action)
    try:
        script = action.code if mode == "code" else render_script(action.code, task.template_info())
    except SpecError as exc:
        return rejected(task, Action(False, reason=f"invalid spec: {exc}"))
    return execute(task, script, sandbox, slot=slot, limits=limits, parent_q=parent_q, w_valid=w_valid,
                   state_code=None if mode == "code" else action.code)
