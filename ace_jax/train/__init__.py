"""Training: train state, optimizer, fixed-shape batches, the jit-compiled GRPO step, checkpoints."""

from ace_jax.train.batch import DEFAULT_BUCKETS, TrainBatch, bucket_length, make_batch, pad_to_bucket
from ace_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ace_jax.train.state import TrainState, abstract_train_state, create_train_state
from ace_jax.train.step import make_train_step, sequence_logprobs

__all__ = ["DEFAULT_BUCKETS", "TrainBatch", "bucket_length", "make_batch", "pad_to_bucket", "OptimizerConfig",
           "learning_rate_schedule", "make_optimizer", "TrainState", "abstract_train_state", "create_train_state",
           "make_train_step", "sequence_logprobs"]
