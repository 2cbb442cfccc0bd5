"""A run directory whose step-0 checkpoint is the warm-started policy (`train.warmstart_steps`).

Copies of it let several runs (sync and async, in a test or a bench) start from one policy
and one curriculum without each paying the warm start."""

from __future__ import annotations

from ace_jax.config import ExperimentConfig


def write_warm_checkpoint(cfg: ExperimentConfig) -> str:
    """Warm start in `cfg.train.run_dir` and checkpoint it at step 0; returns the run directory."""
    from ace_jax.train.loop import Trainer
    trainer = Trainer(cfg, echo=lambda line: None)
    try:
        trainer.warm_start()
        trainer.save()
        trainer.checkpointer.wait()
    finally:
        trainer.close()
    return cfg.train.run_dir
