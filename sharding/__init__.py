"""Where arrays live: mesh configs, logical-axis rules, sharded init, expert parallelism, the planner.

Imports no other project package: model, state and step come in as arguments.

- `sharding.mesh`: mesh configs (YAML in configs/mesh/), `build_mesh`, `initialize_distributed`.
- `sharding.rules`: logical axis -> mesh axes; `sharding_fn`, `state_shardings`, `batch_sharding`.
- `sharding.init`: `sharded_init`, `abstract_state`, optimizer-state shardings.
- `sharding.expert_parallel`, `sharding.context`: the MoE expert FFN under `shard_map`, model hooks.
- `sharding.topology`, `sharding.planner`, `sharding.collectives`, `sharding.report`: `ace-jax plan`.
"""
