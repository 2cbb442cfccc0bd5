"""Several training processes (jax.distributed) acting as one run.

Every process holds the same curriculum (same seed, same exchanged results), so every process
samples the same states and generates the same rollouts (the engine is one SPMD program).
Executions are split: each process runs a disjoint share of a step's executions and the
results are exchanged through the distributed runtime's key-value store, so every process
sees all of them. Only process 0 writes metrics, plots and run files. With one process every
function here is the identity.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Sequence

import jax

_TIMEOUT_MS = 24 * 3600 * 1000   # an execution share may take as long as its slowest script


def maybe_initialize_from_env() -> bool:
    """`jax.distributed.initialize` from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID when all three are set (simulating hosts on one machine, or a launcher that
    exports them); must run before any JAX computation. Returns whether it initialized."""
    keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    if not all(os.environ.get(k) for k in keys) or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    return True


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def _client():
    from jax._src import distributed
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several JAX processes but no distributed client: call jax.distributed.initialize first")
    return client


class Exchange:
    """All-gather of picklable Python objects across processes, call by call (every process
    makes the same sequence of calls)."""

    def __init__(self, name: str = "ace_jax"):
        self.name, self.calls = name, 0

    def all_gather(self, value: Any) -> list[Any]:
        count, me = jax.process_count(), jax.process_index()
        if count == 1:
            return [value]
        client, call = _client(), self.calls
        self.calls += 1
        client.key_value_set_bytes(f"{self.name}/{call}/{me}", pickle.dumps(value))
        out = [value if p == me else pickle.loads(client.blocking_key_value_get_bytes(f"{self.name}/{call}/{p}", _TIMEOUT_MS))
               for p in range(count)]
        if call >= 2:  # every process has read call - 2 before it wrote call - 1
            client.key_value_delete(f"{self.name}/{call - 2}/{me}")
        return out


class SharedExecutions:
    """A worker pool whose `map` runs this process's share (items p, p + P, ...) and returns
    every item's result, in order, on every process. Counts the results that `executed` says
    started a sandbox execution (all processes, and this process's share)."""

    def __init__(self, pool, executed: Callable[[Any], bool] = lambda result: True,
                 exchange: Exchange | None = None):
        self.pool, self.executed = pool, executed
        self.exchange = exchange or Exchange("ace_jax/exec")
        self.started = self.started_here = 0

    def map(self, fn: Callable, items: Sequence) -> list:
        items = list(items)
        count, me = jax.process_count(), jax.process_index()
        mine = items[me::count]
        results = self.pool.map(fn, mine) if mine else []
        self.started_here += sum(map(self.executed, results))
        if count == 1:
            out = results
        else:
            out = [None] * len(items)
            for p, share in enumerate(self.exchange.all_gather(results)):
                out[p::count] = share
        self.started += sum(map(self.executed, out))
        return out

    def take_counts(self) -> tuple[int, int]:
        """(started across processes, started here) since the last call."""
        counts = (self.started, self.started_here)
        self.started = self.started_here = 0
        return counts

    def close(self) -> None:
        self.pool.close()
