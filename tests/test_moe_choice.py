"""The decode MoE backend chosen by measurement at a model's shapes, kept per machine."""

from __future__ import annotations

import json

import pytest
from flax import nnx

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.config import ConfigError, load_config
from ace_jax.inference import Buckets, JaxEngine
from ace_jax.inference.moe_choice import DECODE_CANDIDATES, choice_key, fastest_backend
from ace_jax.models import Qwen3ForCausalLM, get_config


def test_measured_backend_is_the_fastest_kept_on_disk_and_the_engine_uses_it(tmp_path):
    cfg = get_config("tiny-moe")
    store = tmp_path / "moe-choice.json"
    best, times = fastest_backend(cfg, 5, store=store)
    assert set(times) == set(DECODE_CANDIDATES) and all(ms > 0 for ms in times.values())
    assert times[best] == min(times.values())
    kept = json.loads(store.read_text())[choice_key(cfg, 5, DECODE_CANDIDATES)]
    assert kept["backend"] == best and kept["ms"] == times
    assert fastest_backend(cfg, 5, store=store) == (best, times)  # measured once
    engine = JaxEngine(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)), buckets=Buckets(batch=(4,), prompt=(16,), generate=(16,)),
                       decode_moe_backend="measure")
    assert engine.decode_moe_backend == fastest_backend(cfg, 4)[0]


def test_a_stored_choice_is_reused_and_a_damaged_store_is_measured_over(tmp_path):
    cfg = get_config("tiny-moe")
    store = tmp_path / "moe-choice.json"
    # What an earlier process on this machine measured (not the fastest: the store wins, not the clock).
    ms = {name: 1.0 + i for i, name in enumerate(DECODE_CANDIDATES)}
    store.write_text(json.dumps({choice_key(cfg, 3, DECODE_CANDIDATES): {"backend": "sparse", "ms": ms}}))
    assert fastest_backend(cfg, 3, store=store) == ("sparse", ms)

    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"truncated": ')
    best, times = fastest_backend(cfg, 6, store=damaged)
    assert times[best] == min(times.values())
    assert json.loads(damaged.read_text())[choice_key(cfg, 6, DECODE_CANDIDATES)]["backend"] == best


def test_the_decode_backend_is_a_config_key():
    cfg = load_config(DEMO_CONFIG, ["rollout.decode_moe_backend=capacity"])
    assert cfg.rollout.decode_moe_backend == "capacity"
    with pytest.raises(ConfigError, match="rollout.decode_moe_backend.*'fastest'.*allowed"):
        load_config(DEMO_CONFIG, ["rollout.decode_moe_backend=fastest"])
