"""Plan cost figures: analytic minimum traffic, kernels' declared FLOPs in HLO, the roofline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ace_jax.models import get_config
from ace_jax.train.plan_step import analytic_flops, matmul_params_per_token
from sharding.hlo_costs import hlo_flops
from sharding.minimum import ExpertExchange, gather_group, minimum_traffic
from sharding.roofline import CHIPS, chip_key, estimate


@pytest.fixture
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("fsdp", "expert"))


def test_minimum_traffic_counts_gathers_reduce_scatter_lookup_and_token_exchange(mesh):
    dense = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P(("fsdp", "expert"))))
    experts = jax.ShapeDtypeStruct((2, 8, 16), jnp.float32, sharding=NamedSharding(mesh, P("expert", "fsdp")))
    head = jax.ShapeDtypeStruct((8, 32), jnp.float32, sharding=NamedSharding(mesh, P(("fsdp", "expert"))))
    table = jax.ShapeDtypeStruct((32, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, ("fsdp", "expert"))))
    sizes = {"fsdp": 4, "expert": 2}
    assert gather_group(dense, sizes, ("expert",), 2) == 8     # gathered over both axes
    assert gather_group(experts, sizes, ("expert",), 2) == 4   # experts stay local: fsdp only
    params = {"runs": [{"w": dense, "e": experts}], "lm_head": head, "embed": table}
    out = minimum_traffic(params, mesh, compute_bytes=2, ep_axes=("expert",), num_experts=2,
                          forward_passes=2, exchange=ExpertExchange(3, 10, 16, 2, 2), tokens=10)
    # layers: dense 16 local elements x 7 others, experts 32 local x 3 others, gathered per pass;
    # the LM head (32 local x 7) once per step; the table is read by row (10 tokens, 8 wide)
    assert out["weight all-gather"] == (2 * (16 * 7 + 32 * 3) + 32 * 7) * 2
    assert out["gradient reduce-scatter"] == (16 * 7 + 32 * 3 + 32 * 7) * 2
    assert out["embedding lookup"] == 2 * 7 / 8 * 10 * 8 * 2
    # forward gather + scatter, the recompute's gather, the backward's two: 5 x 3 layers
    assert out["expert token exchange"] == 1 * 10 * 16 * 2 * 3 * 5
    assert out["total"] == sum(v for k, v in out.items() if k != "total")


HLO = """HloModule m

%body (p: (s32[], bf16[8,4])) -> (s32[], bf16[8,4]) {
  %p = (s32[], bf16[8,4]) parameter(0)
  %x = bf16[8,4]{1,0} get-tuple-element(%p), index=1
  %w4 = bf16[4,4]{1,0} constant({...})
  %d = bf16[8,4]{1,0} dot(%x, %w4), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %k = bf16[8,4]{1,0} custom-call(%d), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "AA==","cost_estimate":{"flops":"1000","transcendentals":"0"}}}
  ROOT %t = (s32[], bf16[8,4]) tuple(%i, %k)
}

%cond (p: (s32[], bf16[8,4])) -> pred[] {
  %p = (s32[], bf16[8,4]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(48)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (a: bf16[8,4]) -> bf16[8,4] {
  %a = bf16[8,4]{1,0} parameter(0)
  %l = bf16[8,1,16]{2,1,0} parameter(1)
  %r = bf16[4,16,32]{2,1,0} parameter(2)
  %conv = bf16[8,4,32]{2,1,0} convolution(%l, %r), window={size=4 pad=3_3 rhs_reversal=1}, dim_labels=b0f_0io->b0f
  %once = bf16[8,4]{1,0} custom-call(%a), custom_call_target="tpu_custom_call", backend_config={"cost_estimate":{"flops":"7"}}
  %w = (s32[], bf16[8,4]) while(%init), condition=%cond, body=%body
  ROOT %r = bf16[8,4]{1,0} get-tuple-element(%w), index=1
}
"""


def test_hlo_flops_weights_kernels_and_matmuls_by_loop_trip_counts():
    out = hlo_flops(HLO)
    assert (out["kernels"], out["kernel_calls"]) == (48 * 1000 + 7, 49)
    # the dot in the loop body ([8,4] x [4,4]); the convolution (a batched dot's transpose as the
    # TPU compiler writes it): each of the 4 outputs meets one real input through the padding
    assert out["matmul"] == 48 * 2 * 8 * 4 * 4 + 2 * (8 * 32) * 16 * 4
    assert out["total"] == out["kernels"] + out["matmul"]
    assert out["hbm_bytes"] > 48 * 3 * 8 * 4 * 2   # at least the loop body's dot and kernel, every trip


SLICED = """HloModule s

%fused_slice (param_0: f32[48,1024], param_1: s32[]) -> f32[1,1024] {
  %param_0 = f32[48,1024]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,1024]{1,0} dynamic-slice(%param_0, %param_1, %z), dynamic_slice_sizes={1,1024}
}

ENTRY %main (w: f32[48,1024], i: s32[]) -> f32[1,1024] {
  %w = f32[48,1024]{1,0} parameter(0)
  %i = s32[] parameter(1)
  ROOT %f = f32[1,1024]{1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
}
"""


def test_hbm_bytes_count_a_sliced_buffer_as_the_slice():
    # the fusion reads one [1, 1024] row of the stacked [48, 1024] weights (+ the index) and writes it
    assert hlo_flops(SLICED)["hbm_bytes"] == 1024 * 4 + 4 + 1024 * 4


def test_roofline_bounds_step_time_and_mfu():
    chip = CHIPS["v5p"]
    r = estimate(chip, flops=459e12, hbm_bytes=2765e9 / 2, comm_bytes=600e9 * 2, model_flops=229.5e12, tokens=1000)
    assert (r.t_compute, r.t_hbm, r.t_comm) == pytest.approx((1.0, 0.5, 2.0))
    assert r.step_overlapped == pytest.approx(2.0) and r.step_serial == pytest.approx(3.0)
    assert r.bound == "interconnect" and r.mfu_overlapped == pytest.approx(0.25)
    assert r.tokens_per_s_chip == pytest.approx(500)
    assert chip_key("v6e-32", "tpu", "v6e-32") == "v6e" and chip_key("h100x8", "gpu") == "h100"
    assert chip_key("my-gpus", "gpu") is None


def test_analytic_flops_of_the_30b_model():
    cfg = get_config("qwen3-30b-a3b", remat="full")
    p = matmul_params_per_token(cfg)
    active = sum(p.values())   # ~3.3B active matmul weights per token (embedding lookup excluded)
    assert 3.0e9 < active < 3.4e9
    f = analytic_flops(cfg, tokens=4096, seq_len=4096)
    assert f["model"] > 6 * active * 4096
    assert f["hardware"] > f["model"]   # remat recompute and the LM head's recompute
