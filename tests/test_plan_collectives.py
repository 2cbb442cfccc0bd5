"""Collective traffic per mesh axis from HLO text: replica-group formats, loop trip counts, a real compile."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from sharding.collectives import bf16_traffic, collective_traffic, find_collectives, mesh_collectives
from sharding.mesh import build_mesh, load_mesh_config

AXES = ["data", "fsdp", "expert", "tensor"]
SHAPE = [1, 2, 4, 1]   # device p -> (0, p // 4, p % 4, 0)

HLO = """HloModule m, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[16])) -> (s32[], f32[16]) {
  %p = (s32[], f32[16]) parameter(0)
  %x = f32[16]{0} get-tuple-element(%p), index=1
  %ag = f32[64]{0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}, use_global_device_ids=true
  %cp = (f32[16]{0}, f32[16]{0}, u32[], u32[]) collective-permute-start(%x), channel_id=5, source_target_pairs={{0,4},{4,0}}
  ROOT %t = (s32[], f32[16]) tuple(%i, %x)
}

%cond (p: (s32[], f32[16])) -> pred[] {
  %p = (s32[], f32[16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(6)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body2 (q: (s32[], bf16[8])) -> (s32[], bf16[8]) {
  %q = (s32[], bf16[8]) parameter(0)
  %y = bf16[8]{0} get-tuple-element(%q), index=1
  %a2a = bf16[8]{0} all-to-all(%y), channel_id=4, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  ROOT %t2 = (s32[], bf16[8]) tuple(%j, %y)
}

%cond2 (q: (s32[], bf16[8])) -> pred[] {
  %q = (s32[], bf16[8]) parameter(0)
  ROOT %lt2 = pred[] compare(%j, %k), direction=LT
}

ENTRY %main (a: f32[16]) -> f32[16] {
  %a = f32[16]{0} parameter(0)
  %ar = f32[16]{0} all-reduce(%a), channel_id=2, replica_groups={{0,4},{1,5},{2,6},{3,7}}, use_global_device_ids=true, to_apply=%add
  %rs = f32[4]{0} reduce-scatter(%a), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}, to_apply=%add
  %w = (s32[], f32[16]) while(%t0), condition=%cond, body=%body
  %w2 = (s32[], bf16[8]) while(%t1), condition=%cond2, body=%body2, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[16]{0} copy(%a)
}
"""


def test_parser_groups_trip_counts_and_bytes():
    found, notes = find_collectives(HLO, AXES, SHAPE)
    assert notes == []
    by_kind = {c.kind: c for c in found}
    assert set(by_kind) == {"all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute"}
    ag = by_kind["all-gather"]
    assert (ag.axes, ag.group_size, ag.count, ag.payload) == (("expert",), 4, 6, 256)   # iota groups, 6 trips
    ar = by_kind["all-reduce"]
    assert (ar.axes, ar.group_size, ar.count, ar.traffic) == (("fsdp",), 2, 1, 64)       # 2 (n-1)/n x 64 B
    rs = by_kind["reduce-scatter"]
    assert (rs.axes, rs.group_size, rs.payload, rs.traffic) == (("expert",), 4, 64, 48)  # operand = 4 x result
    a2a = by_kind["all-to-all"]
    assert (a2a.axes, a2a.count, a2a.payload) == (("fsdp", "expert"), 3, 16)             # known_trip_count 3
    cp = by_kind["collective-permute"]
    assert (cp.axes, cp.count, cp.traffic) == (("fsdp",), 6, 64)

    class FakeMesh:
        axis_names = AXES
        shape = dict(zip(AXES, SHAPE))

    table = collective_traffic(HLO, FakeMesh())
    assert table["expert"]["traffic"] == 6 * 0.75 * 256 + 48
    assert table["fsdp"]["traffic"] == 64 + 6 * 64
    assert table["fsdp+expert"]["ops"] == 3


def test_traffic_of_a_compiled_program():
    mesh = build_mesh(load_mesh_config({"mesh": {"fsdp": 2, "expert": 4}, "rules": {}}))

    def body(x, y):
        return jax.lax.psum(x, "expert"), jax.lax.all_gather(y, "fsdp", tiled=True)

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("expert"), P("fsdp")), out_specs=(P(), P()),
                              check_vma=False))
    x = jax.ShapeDtypeStruct((4 * 1024,), jnp.float32, sharding=NamedSharding(mesh, P("expert")))
    y = jax.ShapeDtypeStruct((2 * 256,), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
    table = collective_traffic(f.lower(x, y).compile().as_text(), mesh)
    assert table["expert"]["all-reduce"] == 2 * 3 / 4 * 1024 * 4
    assert table["fsdp"]["all-gather"] == 1 / 2 * 512 * 4


def test_bf16_collectives_widened_by_the_cpu_compiler_are_counted_in_bf16():
    """XLA:CPU widens bf16 collectives to f32 (a convert before an all-gather, a `*_promoted`
    reducer for a reduce-scatter): the raw traffic counts 4 bytes per element, `bf16_traffic` 2;
    f32 data is left as it is."""
    mesh = build_mesh(load_mesh_config({"mesh": {"fsdp": 2, "expert": 4}, "rules": {}}))

    def body(a, b, c):
        return (jax.lax.all_gather(a, "expert", tiled=True), jax.lax.psum_scatter(b, "expert", tiled=True),
                jax.lax.all_gather(c, "expert", tiled=True))

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("expert"), P(), P("expert")),
                              out_specs=(P(), P("expert"), P()), check_vma=False))
    sds = lambda n, dt, spec: jax.ShapeDtypeStruct((n,), dt, sharding=NamedSharding(mesh, spec))  # noqa: E731
    hlo = f.lower(sds(4 * 256, jnp.bfloat16, P("expert")), sds(4 * 256, jnp.bfloat16, P()),
                  sds(4 * 64, jnp.float32, P("expert"))).compile().as_text()
    found = {(c.kind, c.payload): c for c in mesh_collectives(hlo, mesh)}
    gather, scatter, plain = found["all-gather", 1024 * 4], found["reduce-scatter", 1024 * 4], found["all-gather", 256 * 4]
    assert (gather.widened, scatter.widened, plain.widened) == (1.0, 1.0, 0.0)
    raw = sum(c.traffic for c in found.values())
    assert raw == 3 / 4 * (1024 * 4 + 1024 * 4 + 256 * 4)
    assert bf16_traffic(found.values()) == 3 / 4 * (1024 * 2 + 1024 * 2 + 256 * 4)
