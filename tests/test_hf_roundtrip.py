"""transformers save_pretrained -> hf.load -> hf.save (several shards) -> transformers from_pretrained."""

import json
import os

import numpy as np
import pytest
import transformers
import jax.numpy as jnp
from safetensors import safe_open

from ace_jax.checkpoint import hf
from ace_jax.models import Qwen3Config, get_config
from helpers.hf_models import hf_logits, random_hf_model


@pytest.mark.parametrize("preset", ["tiny-moe", "tiny-dense"])
def test_round_trip_through_sharded_export(preset, tmp_path):
    cfg = get_config(preset)
    original = random_hf_model(cfg, seed=3)
    original.save_pretrained(tmp_path / "hf")
    model = hf.load(tmp_path / "hf", dtype="float32")
    files = hf.save(model, tmp_path / "out", max_shard_size="100KB", dtype="float32")
    assert len(files) >= 3
    index = json.loads((tmp_path / "out" / hf.INDEX_FILE).read_text())
    keys_in_files = []
    for name in files:
        with safe_open(str(tmp_path / "out" / name), "numpy") as f:
            keys_in_files += list(f.keys())
        assert os.path.getsize(tmp_path / "out" / name) < 100_000 + 50_000  # one tensor may overflow a bit
    assert sorted(keys_in_files) == sorted(index["weight_map"])
    assert len(keys_in_files) == len(set(keys_in_files))
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "numpy") as f:
        assert sorted(f.keys()) == sorted(index["weight_map"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "float32"
    if cfg.is_moe:
        assert config["num_experts"] == config["num_local_experts"] == cfg.num_experts
        assert "model.layers.0.mlp.experts.7.down_proj.weight" in index["weight_map"]
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert (tmp_path / "out" / "generation_config.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="float32")
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, size=(2, 9))
    np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(original, ids), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_logits(original, ids), atol=1e-4)


def test_bfloat16_export_loads_in_transformers(tmp_path):
    cfg = get_config("tiny-moe")
    original = random_hf_model(cfg, seed=1)
    original.save_pretrained(tmp_path / "hf")
    hf.save(hf.load(tmp_path / "hf"), tmp_path / "bf16")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert str(reloaded.dtype) == "torch.bfloat16"
    ours_bf16 = hf.load(tmp_path / "bf16", dtype="float32")
    w_orig = original.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_allclose(np.asarray(ours_bf16.embed[...]), w_orig, rtol=1e-2, atol=1e-3)


def test_config_reads_both_spellings():
    base = get_config("tiny-moe").to_hf()
    new_style = {k: v for k, v in base.items() if k not in ("num_experts", "rope_theta")}
    old_style = {k: v for k, v in base.items() if k not in ("num_local_experts", "rope_parameters")}
    a, b = Qwen3Config.from_hf(new_style), Qwen3Config.from_hf(old_style)
    assert a == b
    assert a.num_experts == 8 and a.rope_theta == 10000.0
    # transformers' class default is norm_topk_prob=False; a file without the key means False.
    assert Qwen3Config.from_hf({k: v for k, v in base.items() if k != "norm_topk_prob"}).norm_topk_prob is False


def test_to_hf_round_trips():
    for preset in ("qwen3-30b-a3b", "qwen3-0.6b", "tiny-moe", "tiny-dense"):
        cfg = get_config(preset)
        assert Qwen3Config.from_hf(cfg.to_hf()) == cfg
