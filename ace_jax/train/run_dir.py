"""A run directory: model_config.json, experiment.json, checkpoints/, metrics.jsonl, plots.

Export and import go through here: the model and optimizer configs recorded in the run
rebuild the abstract train state, so a checkpoint's params restore without the rest."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from flax import nnx

from ace_jax.models import Qwen3Config, Qwen3ForCausalLM
from ace_jax.train.checkpoint import TrainCheckpointer
from ace_jax.train.optimizer import OptimizerConfig, make_optimizer
from ace_jax.train.state import abstract_train_state

MODEL_CONFIG_FILE = "model_config.json"
EXPERIMENT_FILE = "experiment.json"
CHECKPOINT_DIR = "checkpoints"
_RUNTIME = ("param_dtype", "compute_dtype", "moe_backend", "remat")


class RunDirError(ValueError):
    """A run directory that is missing or incomplete; the message names the file."""


def write_run_files(run_dir: str, model_config: Qwen3Config, experiment: dict[str, Any]) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, MODEL_CONFIG_FILE), "w") as f:
        json.dump({**model_config.to_hf(), "ace_jax_runtime": {k: getattr(model_config, k) for k in _RUNTIME}}, f, indent=2)
    with open(os.path.join(run_dir, EXPERIMENT_FILE), "w") as f:
        json.dump(experiment, f, indent=2)


def _read_json(run_dir: str, name: str) -> dict[str, Any]:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise RunDirError(f"{run_dir} is not a run directory: {name} is missing")
    with open(path) as f:
        return json.load(f)


def read_model_config(run_dir: str) -> Qwen3Config:
    data = _read_json(run_dir, MODEL_CONFIG_FILE)
    runtime = data.pop("ace_jax_runtime", {})
    return Qwen3Config.from_hf(data, **runtime)


def read_experiment(run_dir: str) -> dict[str, Any]:
    return _read_json(run_dir, EXPERIMENT_FILE)


def checkpointer(run_dir: str, keep: int = 2) -> TrainCheckpointer:
    return TrainCheckpointer(os.path.join(run_dir, CHECKPOINT_DIR), max_to_keep=max(keep, 2))


def restore_model(run_dir: str, step: int | None = None) -> tuple[Qwen3ForCausalLM, int]:
    """The policy saved in a run (latest complete step, or `step`) and that step."""
    cfg = read_model_config(run_dir)
    experiment = read_experiment(run_dir)
    optimizer = make_optimizer(OptimizerConfig.from_dict(experiment.get("optimizer", {})))
    with_reference = float(experiment.get("loss", {}).get("kl_coef", 0.0)) > 0
    factory = lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    graphdef, abstract = abstract_train_state(factory, optimizer, with_reference=with_reference)
    with checkpointer(run_dir) as ckpt:
        if ckpt.latest_step() is None:
            raise RunDirError(f"{run_dir} has no checkpoint to export")
        # Onto this process's first device, whatever topology (processes, mesh) saved it.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=here), abstract)
        restored = ckpt.restore(target, step=step)
    model = nnx.merge(graphdef, restored.state.params)
    return model, restored.step
