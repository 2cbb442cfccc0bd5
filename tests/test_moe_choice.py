"""The decode MoE backend chosen by measurement at a model's shapes."""

from __future__ import annotations

from flax import nnx

from ace_jax.inference import Buckets, JaxEngine
from ace_jax.inference.moe_choice import DECODE_CANDIDATES, fastest_backend
from ace_jax.models import Qwen3ForCausalLM, get_config


def test_measured_backend_is_the_fastest_and_the_engine_uses_it():
    cfg = get_config("tiny-moe")
    best, times = fastest_backend(cfg, 4)
    assert set(times) == set(DECODE_CANDIDATES) and all(ms > 0 for ms in times.values())
    assert times[best] == min(times.values())
    assert fastest_backend(cfg, 4) == (best, times)  # cached per shape: measured once
    engine = JaxEngine(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)), buckets=Buckets(batch=(4,), prompt=(16,), generate=(16,)),
                       decode_moe_backend="measure")
    assert engine.decode_moe_backend == best
