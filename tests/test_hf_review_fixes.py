"""HF I/O defects found in review, each pinned by a test that failed before its fix."""

import json
import tracemalloc

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from ace_jax.checkpoint import hf, names
from ace_jax.models import Qwen3Config, get_config
from helpers.hf_models import random_hf_model, rewrite_checkpoint


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied")
    random_hf_model(get_config("tiny-dense"), seed=1).save_pretrained(path)  # tiny-dense is tied
    return path


def test_tied_checkpoint_with_an_equal_lm_head_loads(tmp_path, tied_dir):
    path = rewrite_checkpoint(tied_dir, tmp_path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
    model = hf.load(path)
    np.testing.assert_array_equal(np.asarray(model.embed[...]),
                                  load_file(str(path / "model.safetensors"))["model.embed_tokens.weight"])


def test_tied_checkpoint_with_a_different_lm_head_is_refused(tmp_path, tied_dir):
    path = rewrite_checkpoint(tied_dir, tmp_path,
                    lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1.0}))
    with pytest.raises(hf.CheckpointError, match="lm_head.weight differs from model.embed_tokens.weight"):
        hf.load(path)


@pytest.mark.parametrize("change, message", [
    ({"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
])
def test_unimplemented_attention_is_refused_by_name(change, message):
    data = {**get_config("tiny-moe").to_hf(), **change}
    with pytest.raises(ValueError, match=message):
        Qwen3Config.from_hf(data)


def test_generation_config_keeps_every_eos_id(tmp_path):
    cfg = get_config("tiny-moe", eos_token_id=151645, eos_token_ids=(151645, 151643), vocab_size=151936)
    assert hf.generation_config(cfg)["eos_token_id"] == [151645, 151643]
    torch_model = random_hf_model(get_config("tiny-moe"), seed=0)
    torch_model.generation_config.eos_token_id = [2, 5]
    torch_model.save_pretrained(tmp_path / "src")
    model = hf.load(tmp_path / "src")
    assert model.config.eos_token_ids == (2, 5)
    hf.save(model, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [2, 5]
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == [2, 5]


def test_param_dtype_in_the_overrides_is_the_load_dtype(tmp_path):
    random_hf_model(get_config("tiny-moe"), seed=0).save_pretrained(tmp_path)
    model = hf.load(tmp_path, param_dtype="bfloat16", compute_dtype="bfloat16", remat="full")
    assert model.config.param_dtype == "bfloat16" and str(model.embed[...].dtype) == "bfloat16"


def test_stacked_experts_are_read_into_one_preallocated_array(tmp_path):
    cfg = get_config("tiny-moe", num_experts=16, moe_intermediate_size=64)
    random_hf_model(cfg, seed=0).save_pretrained(tmp_path)
    reader = hf.SafetensorsReader(str(tmp_path))
    entry = next(e for e in names.name_map(cfg) if e.attr == "gate_proj" and e.stack == ("layers", "experts"))
    layers = next(count for is_moe, first, count in cfg.layer_runs() if is_moe and first == entry.first_layer)
    shape = (layers, cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
    tracemalloc.start()
    out = hf._read(reader, entry, shape, tuple(slice(None) for _ in shape), np.float32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reader.close()
    assert out.shape == shape
    assert peak < 1.5 * out.nbytes, (peak, out.nbytes)   # a list + np.stack holds two copies
