"""The continuous engine (paged KV pool, forked groups, continuous batching) against the static one."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from ace_jax.inference import Buckets, JaxEngine
from ace_jax.models import Qwen3ForCausalLM, get_config
from rollout.engine import GenerateRequest, SamplingParams

BUCKETS = Buckets(batch=(4,), prompt=(16,), generate=(16,))
# Prompt lengths around the block size 4: a partial last block (copy-on-write), a prompt of one
# token (nothing to prefill), an exact multiple of the block size, several blocks.
PROMPTS = [[5, 17, 33, 99, 250, 7, 8], [300], [44, 45, 46, 47, 48, 49, 50, 51, 52], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]


@pytest.fixture(scope="module")
def model():
    return Qwen3ForCausalLM(get_config("tiny-moe"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def paged(model):
    engine = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256)
    yield engine
    engine.close()


def requests(n: int = 1, seed: int = 11) -> list[GenerateRequest]:
    """Sampled, filtered and greedy rows; routed experts on."""
    params = [SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed),
              SamplingParams(temperature=0.0, max_new_tokens=16),
              SamplingParams(temperature=0.8, top_k=40, top_p=0.9, max_new_tokens=9, seed=seed + 5),
              SamplingParams(temperature=1.0, max_new_tokens=3, seed=seed + 9)]
    return [GenerateRequest(p, sp, n=n, return_routed_experts=True) for p, sp in zip(PROMPTS, params)]


def assert_same(a, b):
    assert a.token_ids == b.token_ids
    assert a.finish_reason == b.finish_reason
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(a.routed_experts, b.routed_experts)


def test_paged_equals_contiguous(model, paged):
    """Same seeds: the paged, continuous engine gives the static engine's tokens, logprobs (1e-5, fp32)
    and routed experts; every KV block returns to the pool."""
    static = JaxEngine(model, buckets=BUCKETS, scheduler="static")
    reqs = requests()
    for ours, theirs in zip(paged.generate(reqs), static.generate(reqs)):
        assert len(ours[0].routed_experts) == ours[0].prompt_tokens + len(ours[0].token_ids) - 1
        assert_same(ours[0], theirs[0])
    assert paged.scheduler.blocks.used == 0
    assert 0 < paged.kv_bytes()["peak"] <= paged.kv_bytes()["reserved"]


def test_unrolled_layers_equal_scanned(model, paged):
    """Per-layer weights and KV buffers with the layers unrolled (the CPU default) give the scanned,
    stacked engine's tokens, logprobs (1e-5, fp32) and routed experts, with and without shared reads."""
    assert paged.unroll_layers and isinstance(paged.scheduler._pool().keys[0], tuple)
    for mode in ("auto", "always"):
        scanned = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256,
                            shared_prefix=mode, unroll_layers=False)
        unrolled = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256,
                             shared_prefix=mode, unroll_layers=True)
        try:
            assert scanned.layers is None and not isinstance(scanned.scheduler._pool().keys[0], tuple)
            reqs = requests(n=2)
            for ours, theirs in zip(unrolled.generate(reqs), scanned.generate(reqs)):
                for a, b in zip(ours, theirs):
                    assert_same(a, b)
        finally:
            scanned.close()
            unrolled.close()


def test_fork_equals_independent_rows(paged):
    """A request with n = 3 prefills its prompt once and forks it; sample j equals a single request
    seeded seed + j, in tokens, logprobs and routed experts."""
    forked = paged.generate(requests(n=3)[:1] + requests(n=3)[2:3])
    alone = paged.generate([r for j in range(3) for r in (requests(seed=11 + j)[0], requests(seed=11 + j)[2])])
    for j in range(3):
        assert_same(forked[0][j], alone[2 * j][0])
        assert_same(forked[1][j], alone[2 * j + 1][0])
    assert len({tuple(c.token_ids) for c in forked[0]}) > 1  # the samples differ
    prefills = [s for s in paged.compiled_shapes if s[0] == "prefill"]
    assert prefills and all(s[1] <= BUCKETS.max_batch for s in prefills)


def test_shared_prefix_reads_equal_per_row_reads(model, paged):
    """Cascade attention (a group's prompt blocks read once for its rows, private blocks per row)
    gives the per-row reads' tokens, logprobs (1e-5) and routed experts."""
    engine = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256, shared_prefix="always")
    try:
        reqs = requests(n=3)
        for ours, theirs in zip(engine.generate(reqs), paged.generate(reqs)):
            for a, b in zip(ours, theirs):
                assert_same(a, b)
        assert any(s[0] == "decode" and s[-1] is not None for s in engine.compiled_shapes)
        assert not any(s[0] == "decode" and s[-1] is not None for s in paged.compiled_shapes)  # auto: 3 rows a group < 4
        assert engine.scheduler.blocks.used == 0
    finally:
        engine.close()


def test_long_row_does_not_block_finished_rows(model):
    """Two decode slots: a long row keeps one while three short requests queued after it pass
    through the other, each finishing before the long row; no recompilation per admission."""
    engine = JaxEngine(model, buckets=BUCKETS, decode_slots=2, decode_chunk=2, block_size=4, kv_pool_tokens=128)
    try:
        long = engine.generate_async([GenerateRequest([5, 6, 7], SamplingParams(temperature=0.0, max_new_tokens=16,
                                                                                 ignore_eos=True))])
        shorts = [engine.generate_async([GenerateRequest([8 + i, 9], SamplingParams(temperature=0.0, max_new_tokens=2,
                                                                                     ignore_eos=True))])
                  for i in range(3)]
        for short in shorts:
            assert len(short.result(timeout=300)[0][0].token_ids) == 2
            assert not long.done()
        assert len(long.result(timeout=300)[0][0].token_ids) == 16
        decodes = [s for s in engine.compiled_shapes if s[0] == "decode"]
        assert len(decodes) <= 2 and engine.scheduler.decode_chunks >= 8  # widths 1 and 8 blocks at most
        assert engine.scheduler.blocks.used == 0
    finally:
        engine.close()


def test_preempted_groups_equal_an_unpreempted_run(model, paged):
    """A pool that holds one largest group (11 blocks of 4, + trash) must preempt: the latest
    admitted group is freed and re-admitted (prompt prefilled again, generated tokens recomputed),
    and every completion equals the large pool's in tokens, logprobs (1e-5) and routed experts."""
    small = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=48)
    try:
        reqs = [GenerateRequest(p, SamplingParams(temperature=1.0, max_new_tokens=16, seed=3 + i, ignore_eos=True),
                                n=2, return_routed_experts=True) for i, p in enumerate(PROMPTS)]
        for ours, theirs in zip(small.generate(reqs), paged.generate(reqs)):
            for a, b in zip(ours, theirs):
                assert_same(a, b)
        assert small.scheduler.preemptions > 0 and small.scheduler.profile["preemptions"] == small.scheduler.preemptions
        assert any(s[0] == "recompute" for s in small.compiled_shapes)
        assert small.scheduler.blocks.used == 0
    finally:
        small.close()


def test_generation_blocks_are_allocated_as_rows_grow(model):
    """Admission takes a group's prompt blocks and its first chunk's blocks, not its whole generation."""
    from ace_jax.inference.scheduler import _Group, _Job

    engine = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256)
    try:
        req = GenerateRequest([5, 6, 7, 8, 9], SamplingParams(temperature=0.0, max_new_tokens=16, ignore_eos=True), n=2)
        # Prefix 4 (one shared block); the first chunk feeds positions 4..7: one private block each.
        assert engine.scheduler._admit_need(_Group(_Job([[None, None]], 2), 0, req, (), [0, 1])) == 1 + 2 * 1
        engine.generate([req])
        assert engine.scheduler.blocks.peak_used == 1 + 2 * 4  # at the end: slots 0..19, 5 blocks a row
        assert engine.scheduler.blocks.used == 0
    finally:
        engine.close()


def test_pool_too_small_is_a_clear_error(model):
    engine = JaxEngine(model, buckets=BUCKETS, block_size=4, kv_pool_tokens=16)
    try:
        with pytest.raises(ValueError, match="needs 6 KV blocks of 4; the pool has 3"):
            engine.generate([GenerateRequest([1] * 9, SamplingParams(max_new_tokens=16))])
    finally:
        engine.close()


def test_paged_pool_on_a_mesh_shards_kv_heads(tmp_path, model):
    """A model sharded fsdp 4 x tensor 2: the pool's KV heads are split over `tensor` like k_proj,
    and the sharded engine's tokens and logprobs equal the unsharded one's."""
    from ace_jax.checkpoint import hf
    from sharding.mesh import build_mesh, load_mesh_config

    cfg = load_mesh_config({"base": "fsdp_tp", "mesh": {"fsdp": 4, "tensor": 2}})
    hf.save(model, str(tmp_path), dtype="float32")
    sharded = hf.load(str(tmp_path), dtype="float32", mesh=build_mesh(cfg), rules=cfg.rules)
    ours = JaxEngine(sharded, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256)
    plain = JaxEngine(model, buckets=BUCKETS, block_size=4, decode_chunk=4, kv_pool_tokens=256)
    try:
        reqs = requests(n=2)[:2]
        for a, b in zip(ours.generate(reqs), plain.generate(reqs)):
            for x, y in zip(a, b):
                assert_same(x, y)
        pool = jax.tree.leaves(ours.scheduler._kv.keys[0])[0]  # stacked or, unrolled, layer 0's
        assert pool.sharding.spec[pool.ndim - 2] == "tensor"
        assert pool.addressable_shards[0].data.shape[pool.ndim - 2] == 1  # 2 KV heads over tensor = 2
    finally:
        ours.close()
        plain.close()


def test_block_reads_equal_slot_reads():
    """Gathering whole blocks then flattening equals the per-slot gather through the same tables."""
    from ace_jax.models import paged as pg

    pool = jax.random.normal(jax.random.key(0), (9, 4, 2, 3))
    tables = np.array([[3, 1, 0], [8, 2, 5]], np.int32)
    pool_np, bs = np.asarray(pool), pool.shape[1]
    per_slot = np.stack([np.stack([pool_np[row[s // bs], s % bs] for s in range(tables.shape[1] * bs)])
                         for row in tables])
    np.testing.assert_array_equal(pg.read_blocks(pool, tables), per_slot)
