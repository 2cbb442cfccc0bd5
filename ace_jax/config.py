"""Experiment configs: YAML files composed by reference, `key=value` overrides, frozen dataclasses.

An experiment YAML has the sections below. `model.preset` names a preset (configs/models/ or
built in) and `mesh` may name a mesh YAML. Overrides use dotted keys
(`loss.eps_high=0.3`, `train.steps=5`). Unknown sections or keys, and bad values, are errors
that name the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from ace_jax.curriculum import CurriculumConfig
from ace_jax.grpo import LossConfig
from ace_jax.train.optimizer import OptimizerConfig


class ConfigError(ValueError):
    """A bad experiment config: the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str | None = "tiny-moe"     # a preset from ace_jax.models.PRESETS ...
    hf: str | None = None               # ... or a HF directory to start from
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    engine: str = "jax"                 # "jax" (embedded) or "sglang"
    group_size: int = 8                 # G rollouts per state
    states_per_step: int = 4            # k informative groups per update batch
    oversample: int = 2                 # sample up to oversample * k states to find informative groups
    max_new_tokens: int = 16
    temperature: float = 1.0
    sglang_urls: tuple[str, ...] = ()   # attach mode; empty = launch
    sglang_python: str = "python"
    sglang_args: tuple[str, ...] = ()
    scheduler: str = "continuous"       # jax engine: "continuous" (paged KV, forked groups) or "static"
    kv_pool_tokens: int = 0             # jax engine: paged KV pool size in tokens (0 = batch x max lengths)
    decode_moe_backend: str = ""        # jax engine decode: "" = measure on CPU (kept per machine), else the model's


@dataclasses.dataclass(frozen=True)
class EnvSection:
    mode: str = "spec"                  # "spec" (tiny models) or "code" (fenced python)
    sandbox: str = "auto"
    timeout_s: float = 30.0
    workers: int = 2
    tasks: str = "train"                # built-in split (train, contrast:train, ...) or a directory of tasks
    prompt_budget_tokens: int = 6000
    cache_executions: bool = True       # deterministic scripts: a repeated response is not re-run
    exec_cache_dir: str = ""            # the persistent execution cache ("" = $ACE_JAX_HOME or ~/.cache/ace-jax)
    exec_cache_mb: int = 512            # its size bound on disk
    executor: str = "local"             # "local" (threads here) or "ray" (sandbox actors; the 'ray' extra)
    ray_address: str = ""               # ray: "" starts a local cluster (or RAY_ADDRESS), "auto", "ray://head:10001"
    ray_actors: int = 1                 # ray: actors, each with env.workers sandbox slots
    min_execution_s: float = 0.0        # each graded response takes at least this long (stands in for real executions)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 10
    seed: int = 0
    micro_batches: int = 1
    run_dir: str = "runs/demo"
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    logprob_chunk: int = 1024
    warmstart_steps: int = 0            # spec mode: behaviour cloning on grammatical specs first
    warmstart_learning_rate: float = 0.0  # the warm start's constant rate (0: optimizer.learning_rate)
    warmstart_child_share: float = 0.0  # share of warm-start rows prompted from a made-up child state
    heldout_eval: bool = False          # evaluate on heldout_tasks before the first RL step and at the end
    heldout_tasks: str = "heldout"      # built-in split (heldout, contrast:heldout, ...) or a tasks directory
    heldout_steps: int = 4              # agent steps per task
    heldout_seeds: int = 3              # sampled evaluations at rollout.temperature (plus one greedy)
    mode: str = "sync"                  # "sync" or "async" (rollouts ahead of the learner)
    max_staleness: int = 1              # async: a group is used at most this many versions after its own


_SECTIONS = {
    "model": ModelSection, "rollout": RolloutSection, "env": EnvSection, "train": TrainSection,
    "loss": LossConfig, "optimizer": OptimizerConfig, "curriculum": CurriculumConfig,
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelSection = ModelSection()
    rollout: RolloutSection = RolloutSection()
    env: EnvSection = EnvSection()
    train: TrainSection = TrainSection()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    mesh: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}
        out["mesh"] = self.mesh
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Coerce a YAML/CLI value to the type of the field's default."""
    if default is None or value is None or isinstance(default, Mapping):
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if isinstance(default, tuple):
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            inner = type(default[0]) if default else str
            return tuple(inner(v) for v in items if v != "")
        if isinstance(default, (int, float)):
            number = type(default)(value)
            if isinstance(default, int) and float(value) != number:
                raise ValueError(value)
            return number
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key '{section}.{key}' = {value!r} is not a valid {type(default).__name__}") from exc


def _build_section(name: str, data: Mapping[str, Any]):
    cls = _SECTIONS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; "
                          f"known keys of '{name}': {sorted(fields)}")
    defaults = cls()
    kwargs = {k: _coerce(name, k, v, getattr(defaults, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"config section '{name}': {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Experiment YAML (optional) + dotted overrides -> ExperimentConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"experiment config {path} does not exist")
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"experiment config {path} must be a mapping of sections")
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in loaded.items()}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] == "mesh" and len(keys) == 1:
            data["mesh"] = value
            continue
        if keys[0] not in _SECTIONS:
            raise ConfigError(f"unknown config section {keys[0]!r} in override {text!r}; "
                              f"sections: {sorted(_SECTIONS) + ['mesh']}")
        if keys[0] == "model" and len(keys) == 3 and keys[1] == "overrides":
            data.setdefault("model", {}).setdefault("overrides", {})[keys[2]] = value
        elif len(keys) != 2:
            raise ConfigError(f"override {text!r} must be section.key=value")
        else:
            data.setdefault(keys[0], {})[keys[1]] = value
    unknown = sorted(set(data) - set(_SECTIONS) - {"mesh"})
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; sections: {sorted(_SECTIONS) + ['mesh']}")
    sections = {name: _build_section(name, data.get(name) or {}) for name in _SECTIONS}
    cfg = ExperimentConfig(**sections, mesh=data.get("mesh"))
    _validate(cfg)
    return cfg


def _validate(cfg: ExperimentConfig) -> None:
    if cfg.rollout.engine not in ("jax", "sglang"):
        raise ConfigError(f"config key 'rollout.engine' is {cfg.rollout.engine!r}; allowed: ['jax', 'sglang']")
    if cfg.rollout.scheduler not in ("continuous", "static") or cfg.rollout.kv_pool_tokens < 0:
        raise ConfigError(f"config keys 'rollout.scheduler' ({cfg.rollout.scheduler!r}; allowed: ['continuous', "
                          f"'static']) and 'rollout.kv_pool_tokens' ({cfg.rollout.kv_pool_tokens}, >= 0)")
    from ace_jax.models.config import MOE_BACKENDS
    decode_backends = ["", "measure", *MOE_BACKENDS]
    if cfg.rollout.decode_moe_backend not in decode_backends:
        raise ConfigError(f"config key 'rollout.decode_moe_backend' is {cfg.rollout.decode_moe_backend!r}; "
                          f"allowed: {decode_backends}")
    if not 0.0 <= cfg.train.warmstart_child_share <= 1.0:
        raise ConfigError(f"config key 'train.warmstart_child_share' is {cfg.train.warmstart_child_share}; "
                          f"allowed: [0, 1]")
    if cfg.env.mode not in ("spec", "code"):
        raise ConfigError(f"config key 'env.mode' is {cfg.env.mode!r}; allowed: ['code', 'spec']")
    if cfg.env.executor not in ("local", "ray"):
        raise ConfigError(f"config key 'env.executor' is {cfg.env.executor!r}; allowed: ['local', 'ray']")
    if cfg.env.workers < 1 or cfg.env.ray_actors < 1:
        raise ConfigError(f"config keys 'env.workers' ({cfg.env.workers}) and 'env.ray_actors' "
                          f"({cfg.env.ray_actors}) must be >= 1")
    if cfg.rollout.group_size < 2:
        raise ConfigError(f"config key 'rollout.group_size' must be >= 2 (GRPO compares rollouts), got {cfg.rollout.group_size}")
    if (cfg.model.preset is None) == (cfg.model.hf is None):
        raise ConfigError("config section 'model' needs exactly one of 'preset' or 'hf'")
    if not cfg.rollout.temperature > 0:
        raise ConfigError(f"config key 'rollout.temperature' must be > 0 for training (logprobs divide by it), "
                          f"got {cfg.rollout.temperature}")
    from ace_jax.train.lengths import LengthError, check_lengths
    try:
        check_lengths(cfg)
    except LengthError as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.train.mode not in ("sync", "async"):
        raise ConfigError(f"config key 'train.mode' is {cfg.train.mode!r}; allowed: ['async', 'sync']")
    if cfg.train.max_staleness < 0:
        raise ConfigError(f"config key 'train.max_staleness' must be >= 0, got {cfg.train.max_staleness}")
    if not cfg.env.min_execution_s >= 0:
        raise ConfigError(f"config key 'env.min_execution_s' must be >= 0, got {cfg.env.min_execution_s}")
    batch = cfg.rollout.group_size * cfg.rollout.states_per_step
    if batch % cfg.train.micro_batches:
        raise ConfigError(f"config key 'train.micro_batches' ({cfg.train.micro_batches}) must divide the "
                          f"update batch rollout.group_size * rollout.states_per_step = {batch}")
