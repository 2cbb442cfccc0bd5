"""Where the trainer's arrays live: one device by default, or a mesh from a mesh config.

With a mesh, the train state is laid out by the config's logical-axis rules, every update batch
is split over the rules' batch axes, and the update is traced with the model's sharding hooks
(activation constraints, expert parallelism) active."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp
import optax

from ace_jax.models.constraints import use
from ace_jax.train.batch import TrainBatch
from ace_jax.train.sharded import batch_sharding_for, global_from_host, shard, train_state_sharding
from ace_jax.train.state import TrainState


class Placement:
    """Single-device placement (no mesh)."""

    mesh = None
    state_sharding = None

    def place_state(self, state: TrainState) -> TrainState:
        return state

    def place_batch(self, batch: TrainBatch) -> TrainBatch:
        return jax.tree.map(jnp.asarray, batch)

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        yield

    def describe(self) -> str:
        return f"single device ({jax.devices()[0].platform})"


class MeshPlacement(Placement):
    """Arrays on a mesh by the rules of a mesh config (configs/mesh/*.yaml)."""

    def __init__(self, mesh_config: str, state: TrainState, optimizer: optax.GradientTransformation):
        from sharding.context import hooks_for
        from sharding.mesh import build_mesh, initialize_distributed, load_mesh_config

        self.config = load_mesh_config(mesh_config)
        initialize_distributed(self.config)
        self.mesh = build_mesh(self.config)
        self.hooks = hooks_for(self.config, self.mesh)
        self.state_sharding = train_state_sharding(state, optimizer, self.mesh, self.config.rules)

    def place_state(self, state: TrainState) -> TrainState:
        return shard(state, self.state_sharding)

    def place_batch(self, batch: TrainBatch) -> TrainBatch:
        return global_from_host(batch, batch_sharding_for(batch, self.mesh, self.config.rules))

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        with jax.set_mesh(self.mesh), use(self.hooks):
            yield

    def describe(self) -> str:
        shape = ", ".join(f"{k}={v}" for k, v in dict(self.mesh.shape).items())
        return f"mesh {self.config.name} ({shape}; expert parallel: {self.config.expert_parallel})"


def make_placement(mesh_config: str | None, state: TrainState, optimizer: optax.GradientTransformation) -> Placement:
    return Placement() if not mesh_config else MeshPlacement(mesh_config, state, optimizer)
