"""Several training processes (jax.distributed) acting as one run.

Every process holds the same curriculum (same seed, same exchanged results), so every process
samples the same states and generates the same rollouts (the engine is one SPMD program).
Executions are split: each process runs a disjoint share of a step's executions and the
results are exchanged through the distributed runtime's key-value store, so every process
sees all of them. Only process 0 writes metrics, plots and run files. With one process every
function here is the identity.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from typing import Any, Callable, Iterator, Sequence

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
    """All-gather of picklable Python objects across processes. Unkeyed calls are matched call by
    call (every process makes the same sequence of them); a keyed call is matched by its key, so
    calls made concurrently from several threads (rounds executing at once) cannot pair up wrongly."""

    def __init__(self, name: str = "ace_jax"):
        self.name, self.calls = name, 0
        self._lock = threading.Lock()

    def all_gather(self, value: Any, key: str | None = None, forget: str | None = None) -> list[Any]:
        """Every process's `value`, by process index. With `key`, the exchange named `key`; `forget`
        names an earlier keyed exchange whose entry of this process every process has read."""
        count, me = jax.process_count(), jax.process_index()
        if count == 1:
            return [value]
        client = _client()
        if key is None:
            with self._lock:
                call = self.calls
                self.calls += 1
            name = str(call)
        else:
            name = f"k{key}"
        client.key_value_set_bytes(f"{self.name}/{name}/{me}", pickle.dumps(value))
        out = [value if p == me else pickle.loads(client.blocking_key_value_get_bytes(f"{self.name}/{name}/{p}", _TIMEOUT_MS))
               for p in range(count)]
        if key is None and call >= 2:  # every process has read call - 2 before it wrote call - 1
            client.key_value_delete(f"{self.name}/{call - 2}/{me}")
        if forget is not None:
            with contextlib.suppress(Exception):  # already gone
                client.key_value_delete(f"{self.name}/k{forget}/{me}")
        return out


class SharedExecutions:
    """A worker pool whose `map` runs this process's share (items p, p + P, ...) and returns
    every item's result, in order, on every process. Counts, per thread, the results that
    `executed` says started a sandbox execution (all processes, and this process's share).

    Rounds may execute at once, each in its own thread: inside `with pool.round(key, forget)`
    a thread's `map` calls exchange under that key (and the calls' counts are that thread's)."""

    def __init__(self, pool, executed: Callable[[Any], bool] = lambda result: True,
                 exchange: Exchange | None = None):
        self.pool, self.executed = pool, executed
        self.exchange = exchange or Exchange("ace_jax/exec")
        self._local = threading.local()

    @contextlib.contextmanager
    def round(self, key: str, forget: str | None = None) -> Iterator[None]:
        """This thread's `map` calls belong to the round named `key` (`forget`: a round whose
        results every process has taken, as in `Exchange.all_gather`)."""
        self._local.round, self._local.calls = (key, forget), 0
        try:
            yield
        finally:
            self._local.round = None

    def _counts(self) -> list[int]:
        if not hasattr(self._local, "counts"):
            self._local.counts = [0, 0]
        return self._local.counts

    def map(self, fn: Callable, items: Sequence) -> list:
        items = list(items)
        count, me = jax.process_count(), jax.process_index()
        mine = items[me::count]
        results = self.pool.map(fn, mine) if mine else []
        counts = self._counts()
        counts[1] += sum(map(self.executed, results))
        if count == 1:
            out = results
        else:
            out = [None] * len(items)
            for p, share in enumerate(self.exchange.all_gather(results, *self._round_key())):
                out[p::count] = share
        counts[0] += sum(map(self.executed, out))
        return out

    def _round_key(self) -> tuple[str | None, str | None]:
        """(key, forget) of this thread's next exchange: unkeyed outside `round`."""
        keyed = getattr(self._local, "round", None)
        if keyed is None:
            return None, None
        key, forget = keyed
        call, self._local.calls = self._local.calls, self._local.calls + 1
        return f"{key}.{call}", None if forget is None else f"{forget}.{call}"

    def take_counts(self) -> tuple[int, int]:
        """(started across processes, started here) by this thread since its last call."""
        counts = tuple(self._counts())
        self._local.counts = [0, 0]
        return counts

    def close(self) -> None:
        self.pool.close()
