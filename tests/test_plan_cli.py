"""`ace-jax plan` end to end: fake CPU devices (figures checked against an analytic count) with a
sweep, and the real TPU compiler (libtpu) for a small v5p topology, including a model too big."""

import csv
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from ace_jax.cli import main
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train.optimizer import OptimizerConfig, make_optimizer

B, T = 8, 32


def analytic_param_bytes(cfg, factors):
    """Per-device parameter bytes: each tensor's bytes / the mesh factor of each of its logical axes."""
    model = nnx.eval_shape(lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    total = 0
    for var in jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable)):
        split = math.prod(factors.get(name, 1) for name in var.get_metadata("logical_axes"))
        assert all(d % factors.get(n, 1) == 0 for d, n in zip(var.shape, var.get_metadata("logical_axes")))
        total += math.prod(var.shape) * np.dtype(var.dtype).itemsize // split
    return total, model


def run_plan(argv, capsys, tmp_path):
    out_json = tmp_path / "plan.json"
    assert main(["plan", *argv, "--json", str(out_json)]) == 0
    return json.loads(out_json.read_text()), capsys.readouterr().out


def test_plan_on_fake_devices_matches_analytic_count_and_writes_sweep(tmp_path, capsys):
    configs = tmp_path / "meshes"
    configs.mkdir()
    (configs / "a_fsdp.yaml").write_text("base: fsdp\n")
    (configs / "b_fsdp_tp.yaml").write_text("base: fsdp_tp\nmesh: {fsdp: 4, tensor: 2}\n")
    results, text = run_plan(["--model", "tiny-dense", "--sweep", str(configs / "*.yaml"), "--devices", "8",
                              "--batch", str(B), "--seq-len", str(T), "--out", str(tmp_path / "out"),
                              "--param-dtype", "float32", "--hbm-gb", "1"], capsys, tmp_path)
    cfg = get_config("tiny-dense")
    factors = {"a_fsdp": ({"embed": 8}, 8), "b_fsdp_tp": ({"embed": 4, "heads": 2, "kv_heads": 2, "mlp": 2, "vocab": 2}, 4)}
    assert [r["name"] for r in results] == list(factors)
    for r in results:
        f, batch_shards = factors[r["name"]]
        params, model = analytic_param_bytes(cfg, f)
        opt_state = jax.eval_shape(make_optimizer(OptimizerConfig()).init, nnx.state(model, nnx.Param))
        scalars = sum(4 for leaf in jax.tree.leaves(opt_state) if leaf.ndim == 0)
        mem = r["memory"]
        assert mem["params"] == r["analytic"]["params"] == params
        assert mem["optimizer"] == r["analytic"]["optimizer"] == 2 * params + scalars   # fp32 mu, nu + counts
        local_b = B // batch_shards
        batch = 4 * (local_b * T * 4) + local_b * 4   # 4 token arrays [b, T] + advantages [b]
        assert mem["batch"] == batch
        # XLA's own argument size: params + optimizer + batch + step, rng, skipped (4 + 8 + 4 bytes)
        assert mem["arguments"] == params + mem["optimizer"] + batch + 16
        assert mem["temp"] > 0 and mem["peak"] >= mem["arguments"]
        assert r["exact"] is False and r["fits"] is True and r["hbm_bytes"] == 2**30
        assert r["collectives"]["fsdp"]["all-gather"] > 0
    assert "tensor" in results[1]["collectives"]
    assert "fake CPU devices: APPROXIMATE" in text and "fits: yes" in text
    rows = list(csv.DictReader(open(tmp_path / "out" / "plan.csv")))
    assert [row["config"] for row in rows] == ["a_fsdp", "b_fsdp_tp"] and rows[0]["fits"] == "yes"
    assert (tmp_path / "out" / "plan.md").read_text().startswith("| config |")
    assert (tmp_path / "out" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_with_the_tpu_compiler(tmp_path, capsys):
    pytest.importorskip("libtpu", reason="TPU planning needs libtpu (the dev / tpu extra)")
    results, text = run_plan(["--model", "tiny-dense", "--mesh", "v5p-8"], capsys, tmp_path)
    (r,) = results
    assert r["exact"] is True and r["compiler"] == "TPU compiler (v5p:2x2x1)" and r["devices"] == 4
    assert r["fits"] is True and 0 < r["memory"]["peak"] < r["hbm_bytes"] == 95.74 * 2**30
    params, _ = analytic_param_bytes(get_config("tiny-dense"), {"embed": 4})
    assert r["memory"]["params"] == params
    assert "real target compiler" in text


def test_plan_reports_a_model_too_big_for_the_chip(tmp_path, capsys):
    pytest.importorskip("libtpu", reason="TPU planning needs libtpu (the dev / tpu extra)")
    results, text = run_plan(["--model", "tiny-dense", "--mesh", "v5p-8", "--set", "vocab_size=8388608",
                              "--set", "hidden_size=4096"], capsys, tmp_path)
    (r,) = results
    assert r["fits"] is False and r["exact"] is True
    assert r["memory"]["peak"] > r["hbm_bytes"] and abs(r["hbm_bytes"] / 2**30 - 95.74) < 0.01
    big = get_config("tiny-dense", vocab_size=8388608, hidden_size=4096)
    assert r["memory"]["params"] == analytic_param_bytes(big, {"embed": 4})[0] > 32 * 2**30
    assert "fits: NO" in text and "does not fit: the compiler needs at least" in text and "95.74 GiB" in text


@pytest.mark.slow
def test_tpu_plan_compiles_the_grouped_matmul_kernels(tmp_path, capsys):
    """The TPU plan's compiled step runs the MoE experts with the megablox kernels (auto backend):
    per MoE layer 3 forward grouped matmuls and 6 backward ones (gmm for the input gradients,
    tgmm for the weight gradients), and reports FLOPs, traffic and a roofline."""
    pytest.importorskip("libtpu", reason="TPU planning needs libtpu (the dev / tpu extra)")
    mesh = tmp_path / "v5p-8-ep.yaml"
    mesh.write_text("base: expert_as_data\ntarget: {platform: tpu, topology: v5p-8, devices: 4}\n"
                    "mesh: {data: 1, fsdp: 1, expert: 4, tensor: 1}\n"
                    "train: {batch: 4, seq_len: 64, compute_dtype: bfloat16, remat: none}\n")
    with jax.default_matmul_precision("default"):   # conftest's "highest" has no bf16 Mosaic lowering
        results, text = run_plan(["--model", "tiny-moe", "--mesh", str(mesh)], capsys, tmp_path)
    (r,) = results
    cfg = get_config("tiny-moe")
    assert r["info"]["moe_backend"] == "gmm" and r["exact"] is True
    compiled = r["info"]["compiled"]
    assert compiled["kernel_calls"] == 9 * cfg.num_moe_layers
    assert compiled["flops"] > compiled["kernel_flops"] > 0
    layer = r["info"]["moe_layer_flops"]
    assert layer["gmm"]["compiled"] <= 1.3 * layer["gmm"]["analytic"]
    assert r["info"]["traffic_minimum"]["total"] > 0 and r["info"]["chip"] == "v5p"
    assert "grouped-matmul kernels (declared)" in text and "roofline on TPU v5p" in text
