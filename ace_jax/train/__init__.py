"""Training: train state, the jit-compiled GRPO step, the loop, checkpoints (train.checkpoint)."""
