"""Experiment configs: YAML + dotted overrides; unknown keys and bad values name the key."""

import pytest

from ace_jax.config import ConfigError, load_config
from ace_jax.commands.demo import DEMO_CONFIG


def test_demo_config_loads_with_overrides():
    cfg = load_config(DEMO_CONFIG, ["train.steps=3", "loss.eps_high=0.3", "rollout.group_size=4",
                                    "train.length_buckets=[32,64]", "model.overrides.remat=full"])
    assert cfg.train.steps == 3 and cfg.loss.eps_high == 0.3 and cfg.rollout.group_size == 4
    assert cfg.train.length_buckets == (32, 64)
    assert cfg.model.overrides["remat"] == "full"
    assert cfg.curriculum.capacity == 512  # from the YAML


@pytest.mark.parametrize("override, message", [
    ("train.stpes=3", r"unknown config key\(s\) \['train.stpes'\]"),
    ("loss.agg=mean", "agg"),
    ("rollout.engine=vllm", "'rollout.engine' is 'vllm'; allowed"),
    ("rollout.group_size=1", "'rollout.group_size' must be >= 2"),
    ("train.steps=abc", "'train.steps' = 'abc' is not a valid int"),
    ("optim.learning_rate=1", "unknown config section 'optim'"),
    ("train.micro_batches=3", "'train.micro_batches' \\(3\\) must divide"),
    ("curriculum.potential=magic", "potential"),
    ("train.warmstart_child_share=1.5", "'train.warmstart_child_share' is 1.5; allowed"),
    ("steps", "not of the form"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO_CONFIG, [override])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/experiments/nope.yaml")


def test_every_experiment_config_loads():
    import pathlib
    configs = sorted(pathlib.Path(DEMO_CONFIG).parent.glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.steps > 0
    big = load_config(pathlib.Path(DEMO_CONFIG).parent / "qwen3-30b-a3b-code.yaml")
    assert big.model.preset is None and big.env.mode == "code" and big.mesh == "h100x8"
