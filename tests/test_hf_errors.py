"""Bad checkpoints and configs fail with messages that name the problem."""

import json

import numpy as np
import pytest

from ace_jax.checkpoint import hf
from ace_jax.models import Qwen3Config, get_config
from helpers.hf_models import random_hf_model, rewrite_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    random_hf_model(get_config("tiny-moe"), seed=0).save_pretrained(path)
    return path


def _copy_with(tmp_path, hf_dir, mutate):
    return rewrite_checkpoint(hf_dir, tmp_path, mutate)


def test_missing_tensor(tmp_path, hf_dir):
    path = _copy_with(tmp_path, hf_dir, lambda t: t.pop("model.layers.2.mlp.experts.3.up_proj.weight"))
    with pytest.raises(hf.CheckpointError, match=r"missing tensors \(1\): model.layers.2.mlp.experts.3.up_proj.weight"):
        hf.load(path)


def test_wrong_shape_and_unexpected(tmp_path, hf_dir):
    def mutate(t):
        t["model.norm.weight"] = np.ones(7, np.float32)
        t["model.extra.weight"] = np.ones(2, np.float32)
    path = _copy_with(tmp_path, hf_dir, mutate)
    with pytest.raises(hf.CheckpointError) as err:
        hf.load(path)
    assert "mis-shaped tensors (1): model.norm.weight: file (7,) vs expected (64,)" in str(err.value)
    assert "unexpected tensors (1): model.extra.weight" in str(err.value)


def test_unknown_model_type(tmp_path, hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        hf.load(tmp_path)


def test_empty_and_missing_directories(tmp_path):
    with pytest.raises(hf.CheckpointError, match="has no config.json"):
        hf.load(tmp_path)
    with pytest.raises(hf.CheckpointError, match="does not exist"):
        hf.load(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(get_config("tiny-dense").to_hf()))
    with pytest.raises(hf.CheckpointError, match="no \\*.safetensors files"):
        hf.load(tmp_path)


def test_corrupt_safetensors(tmp_path, hf_dir):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    data = (hf_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(hf.CheckpointError, match="cannot read safetensors file"):
        hf.load(tmp_path)


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="'num_attention_heads' \\(6\\) must be a multiple of 'num_key_value_heads' \\(4\\)"):
        get_config("tiny-moe", num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="'moe_backend' is 'fast'; allowed"):
        get_config("tiny-moe", moe_backend="fast")
    with pytest.raises(ValueError, match="unknown model preset 'qwen9'"):
        get_config("qwen9")
    with pytest.raises(ValueError, match="unknown config key"):
        get_config("tiny-moe").replace(hidden=3)
    with pytest.raises(ValueError, match="mlp_only_layers"):
        Qwen3Config.from_hf({**get_config("tiny-moe").to_hf(), "mlp_only_layers": [9]})
