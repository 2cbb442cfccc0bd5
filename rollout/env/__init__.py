"""The MLE environment: tasks (format, built-ins, mle-bench import), grading, the agent's
prompts and response parsing, the tiny-model spec mode, reward and the step that ties them
together (`rollout.env.execute`). Executions run in `rollout.sandbox`."""
