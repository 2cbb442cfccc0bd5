"""Mesh configs, presets and logical-axis rules (no compilation)."""

import logging

import jax
import pytest
from jax.sharding import PartitionSpec as P

from sharding.mesh import MESH_AXES, PRESET_DIR, MeshConfigError, build_mesh, load_mesh_config
from sharding.rules import Rules, RulesError, logical_to_spec, resolve, sharding_fn
from sharding.topology import tpu_chips, tpu_topology_name

RULE_PRESETS = ("fsdp", "fsdp_ep", "fsdp_tp", "expert_as_data")
HARDWARE_PRESETS = ("h100x8", "h100x16", "v5p-64", "v6e-32")


def write(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fill_axis_and_auto_mesh():
    cfg = load_mesh_config({"mesh": {"fsdp": -1, "expert": 2}, "rules": {"batch": ["data", "fsdp"]}})
    assert cfg.axis_sizes(8) == {"data": 1, "fsdp": 4, "expert": 2, "tensor": 1}
    mesh = build_mesh(cfg)
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "expert": 2, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_wrong_product_states_both_numbers(tmp_path):
    cfg = load_mesh_config(write(tmp_path, "mesh: {fsdp: 4, expert: 4}\nrules: {embed: fsdp}\n"))
    with pytest.raises(MeshConfigError, match=r"multiply to 16 but there are 8 devices"):
        build_mesh(cfg)
    cfg = load_mesh_config({"mesh": {"fsdp": -1, "expert": 3}, "rules": {}})
    with pytest.raises(MeshConfigError, match=r"multiply to 3, which does not divide the device count 8"):
        cfg.axis_sizes(8)


def test_preset_contradicting_its_device_count(tmp_path):
    text = "target: {platform: gpu, devices: 8}\nmesh: {fsdp: 2, expert: 2}\nrules: {embed: fsdp}\n"
    with pytest.raises(MeshConfigError, match=r"multiply to 4 but there are 8 devices"):
        load_mesh_config(write(tmp_path, text))


@pytest.mark.parametrize("text, pattern", [
    ("mesh: {fsdp: -1, model: 2}\nrules: {}\n", r"unknown mesh axis 'model'; mesh axes are \['data', 'fsdp', 'expert', 'tensor'\]"),
    ("dcn: {pipeline: 2}\nrules: {}\n", r"unknown mesh axis 'pipeline'"),
    ("mesh: {fsdp: -1}\nrules: {embed: model}\n", r"rule 'embed' names mesh axis 'model', which is not a mesh axis"),
    ("mesh: {fsdp: -1}\nrules: {hidden: fsdp}\n", r"unknown logical axis 'hidden'"),
    ("mesh: {fsdp: -1, expert: -1}\nrules: {}\n", r"at most one axis may be -1"),
    ("mesh: {fsdp: 0}\nrules: {}\n", r"mesh.fsdp must be a positive integer or -1, got 0"),
    ("mesh: {fsdp: -1}\nrules: {embed: [fsdp, fsdp]}\n", r"repeats a mesh axis"),
    ("mesh: {fsdp: -1}\nrulez: {}\n", r"unknown key\(s\) \['rulez'\]"),
    ("mesh: {fsdp: -1}\nrules: {}\nexpert_parallel: ring2\n", r"expert_parallel is 'ring2'"),
    ("mesh: {fsdp: -1}\nrules: {}\ntarget: {platform: ipu}\n", r"target.platform is 'ipu'"),
    ("mesh: {fsdp: -1}\n", r"'rules' must be a mapping"),
])
def test_bad_configs_fail_clearly(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_mesh_config(path)
    assert str(path) in str(info.value) or "rule" in str(info.value)


def test_rule_naming_axis_missing_from_the_mesh():
    mesh = jax.sharding.Mesh(jax.devices()[:2], ("fsdp",))
    rules = Rules.from_mapping({"embed": "expert"}, mesh_axes=MESH_AXES)
    with pytest.raises(RulesError, match=r"rule 'embed' names mesh axis 'expert', which the mesh does not have"):
        resolve(("embed",), (8,), mesh, rules)


def test_unknown_preset_lists_presets():
    with pytest.raises(MeshConfigError, match=r"neither a file nor a preset; presets: .*fsdp"):
        load_mesh_config("no-such-preset")


@pytest.mark.parametrize("name", RULE_PRESETS + HARDWARE_PRESETS)
def test_presets_load_and_document_their_hardware(name):
    path = PRESET_DIR / f"{name}.yaml"
    assert path.read_text().startswith("#"), "each preset starts with a comment on the hardware it assumes"
    cfg = load_mesh_config(name)
    if name in HARDWARE_PRESETS:
        n = cfg.devices
        assert n and cfg.target["hbm_gb"] > 0
        assert cfg.axis_sizes(n)  # product matches the preset's device count
        if cfg.platform == "tpu":
            assert tpu_chips(cfg.target["topology"]) == n
    else:
        assert cfg.axis_sizes(8)  # rule presets run on the 8 test devices


def test_h100x8_says_how_the_optimizer_fits():
    cfg = load_mesh_config("h100x8")
    assert cfg.train["moments_dtype"] == "bfloat16"
    assert "bf16" in (PRESET_DIR / "h100x8.yaml").read_text().lower()


def test_base_inheritance(tmp_path):
    path = write(tmp_path, "base: expert_as_data\nmesh: {fsdp: 1, expert: 8}\ntrain: {batch: 4}\n")
    cfg = load_mesh_config(path)
    assert cfg.mesh == {"data": 1, "fsdp": 1, "expert": 8, "tensor": 1}
    assert cfg.rules == load_mesh_config("expert_as_data").rules and cfg.expert_parallel == "ring"


def test_dcn_axes_multiply_with_ici():
    cfg = load_mesh_config({"mesh": {"expert": 4}, "dcn": {"fsdp": 2}, "rules": {"experts": "expert"}})
    assert cfg.axis_sizes(8) == {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}
    assert dict(build_mesh(cfg).shape)["fsdp"] == 2


def test_tpu_names():
    assert tpu_topology_name("v5p-64") == "v5p:2x4x4" and tpu_chips("v5p-64") == 32
    assert tpu_topology_name("v6e-32") == "v6e:4x8" and tpu_chips("v6e-32") == 32
    assert tpu_topology_name("v5p:2x2x1") == "v5p:2x2x1"
    with pytest.raises(ValueError, match="unknown TPU topology 'v9-3'"):
        tpu_topology_name("v9-3")


def test_resolution_order_divisibility_and_logging(caplog, monkeypatch):
    import sharding.rules
    monkeypatch.setattr(sharding.rules, "_LOGGED", set())  # notes are logged once per process
    mesh = build_mesh(load_mesh_config({"mesh": {"fsdp": 2, "tensor": 4}, "rules": {}}))
    rules = Rules.from_mapping({"batch": ["data", "fsdp"], "embed": "fsdp", "kv_heads": "tensor",
                                "heads": "tensor", "vocab": "tensor"})
    # activations: batch takes fsdp first, so embed is left unsharded (a mesh axis is used once)
    assert logical_to_spec(("batch", "seq", "embed"), (4, 16, 64), mesh, rules) == P("fsdp")
    assert logical_to_spec(("embed", "vocab"), (64, 512), mesh, rules) == P("fsdp", "tensor")
    # 2 KV heads over tensor=4: replicated by rule, with a note and a logged warning
    with caplog.at_level(logging.WARNING, logger="sharding.rules"):
        spec = logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (3, 64, 2, 32), mesh, rules)
    assert spec == P(None, "fsdp")
    _, notes = resolve(("kv_heads",), (2,), mesh, rules)
    assert notes == ["kv_heads (2) not divisible by tensor (4): replicated over tensor by rule"]
    assert any("kv_heads (2) not divisible by tensor (4)" in r.getMessage() for r in caplog.records)
    assert logical_to_spec(("heads",), (8,), mesh, rules) == P("tensor")
    sharding = sharding_fn(mesh, rules)(("embed", "vocab"), (64, 512))
    assert sharding.spec == P("fsdp", "tensor") and sharding.mesh is mesh


def test_rules_from_preset_name_and_default():
    mesh = build_mesh(load_mesh_config("fsdp"))
    assert sharding_fn(mesh, "fsdp_tp")(("embed", "mlp"), (64, 128)).spec == P("fsdp")  # tensor=1 in this mesh
    assert sharding_fn(mesh, None)(("vocab", "embed"), (512, 64)).spec == P(None, "fsdp")
