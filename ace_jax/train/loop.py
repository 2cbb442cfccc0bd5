"""The AceGRPO training loop: curriculum -> rollouts -> sandboxed grading -> buffer -> GRPO step.

One step: the Learnability-Potential sampler draws states from the Evolving Data Buffer, the
rollout engine samples G actions per state, the sandbox pool executes them, rewards update the
buffer (and new results become child states), advantages pick the informative groups, and the
jit-compiled update runs on a fixed-shape batch. Weights then sync to the engine, metrics are
logged (a line per step with rate and ETA, metrics.jsonl, PNG plots at the end) and the train
state, buffer and sampler are checkpointed together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from ace_jax.agent.codec import make_codec
from ace_jax.agent.states import child_records, entry_state
from ace_jax.config import ConfigError, ExperimentConfig
from ace_jax.curriculum import EvolvingBuffer, LearnabilitySampler, MetricsLog, plot_metrics
from ace_jax.grpo import compute_advantages
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train.assemble import assemble_batch
from ace_jax.train import run_dir as run_files
from ace_jax.train.hosts import SharedExecutions, is_writer
from ace_jax.train.lengths import LengthError, check_lengths, engine_buckets, prompt_limit
from ace_jax.train.placement import make_placement
from ace_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ace_jax.train.exec_cache import make_execution_cache
from ace_jax.train.heldout import heldout_tracker
from ace_jax.train.metrics_file import METRICS_FILE, MetricsFile
from ace_jax.train.rollouts import Generated, RolloutRound, execute, generate
from ace_jax.train.run_state import pack_curriculum, unpack_curriculum, unpack_curriculum_log
from ace_jax.train.tensorboard import TensorBoardWriter
from ace_jax.train.state import create_train_state
from ace_jax.train.step import make_train_step
from rollout.env.prepare import ensure_tasks
from rollout.env.suites import parse_split, suite_of_source
from rollout.env.tasks import load_tasks
from rollout.sandbox.base import Limits
from rollout.executors import make_executor

log = logging.getLogger(__name__)


def select_tasks(spec: str) -> dict:
    """A built-in split (`train`, `heldout`, `all`, or `SUITE:SPLIT` such as `contrast:train`;
    see `rollout.env.suites`) or a directory of prepared tasks."""
    parsed = parse_split(spec)
    if parsed is not None:
        suite, split = parsed
        tasks = ensure_tasks(suite=suite.name)
        return {k: t for k, t in tasks.items() if split == "all" or t.config.split == split}
    tasks = load_tasks(spec)
    if not tasks:
        raise ValueError(f"env.tasks: no tasks found under {spec!r} (expected train, heldout, all, SUITE:SPLIT "
                         f"or a directory)")
    return tasks


def vocabulary_tasks(tasks: dict, splits: tuple[str, ...] = ()) -> dict:
    """Tasks the spec vocabulary is built over: all core built-in tasks, every task of each other
    built-in suite that `tasks` draws from or that one of the split names `splits` names
    (held-out splits included), and the run's own."""
    suites = {s.name for t in tasks.values() if (s := suite_of_source(t.config.source)) is not None}
    suites |= {parsed[0].name for split in splits if (parsed := parse_split(split)) is not None}
    extra = {k: t for name in sorted(suites - {"core"}) for k, t in ensure_tasks(suite=name).items()}
    return {**ensure_tasks(), **extra, **tasks}


def build_model(cfg: ExperimentConfig, vocab_size: int, pad_id: int, eos_id: int) -> Qwen3ForCausalLM:
    """The policy: a preset sized to the codec's vocabulary, or a HF checkpoint. With a mesh,
    parameters are created (or loaded, slice by slice) directly sharded by the mesh rules."""
    mesh = rules = None
    if cfg.mesh:
        from sharding.mesh import mesh_for
        mesh_cfg, mesh = mesh_for(cfg.mesh)
        rules = mesh_cfg.rules
    if cfg.model.hf:
        from ace_jax.checkpoint import hf
        return hf.load(cfg.model.hf, mesh=mesh, rules=rules, **dict(cfg.model.overrides))
    overrides = dict(cfg.model.overrides)
    preset = get_config(cfg.model.preset, **overrides)
    if preset.vocab_size < vocab_size or cfg.env.mode == "spec":
        overrides["vocab_size"] = vocab_size  # spec mode: exactly the word vocabulary
    overrides.setdefault("pad_token_id", pad_id)
    overrides.setdefault("eos_token_id", eos_id)
    model_cfg = get_config(cfg.model.preset, **overrides)
    make = lambda: Qwen3ForCausalLM(model_cfg, rngs=nnx.Rngs(cfg.train.seed))  # noqa: E731
    if mesh is None:
        return make()
    from sharding.init import sharded_init
    graphdef = nnx.split(nnx.eval_shape(make))[0]
    return nnx.merge(graphdef, sharded_init(lambda: nnx.split(make())[1], mesh, rules))


def _ran_in_a_sandbox(result) -> bool:
    """Whether a step result started a sandbox execution (not rejected unparsed, not a cache hit)."""
    return result.execution is not None and not result.execution.from_cache


class Trainer:
    """Owns the model state, engine, sandboxes, buffer and sampler of one run directory."""

    def __init__(self, cfg: ExperimentConfig, *, echo: Callable[[str], None] | None = None):
        self.cfg, self.echo = cfg, echo or (lambda line: print(line, flush=True))
        self.run_dir = cfg.train.run_dir
        self.writer = is_writer()  # only process 0 writes metrics, plots and run files
        if not self.writer:
            self.echo = lambda line: None
        if self.writer:
            os.makedirs(self.run_dir, exist_ok=True)
        self.tasks = select_tasks(cfg.env.tasks)
        self.task_ids = sorted(self.tasks)
        # The spec vocabulary covers every built-in task of the suites in use, so held-out
        # evaluation can reuse it.
        self.codec = make_codec(cfg.env.mode, list(vocabulary_tasks(self.tasks, (cfg.train.heldout_tasks,)).values()),
                                prompt_limit(cfg))
        model = build_model(cfg, self.codec.vocab_size, self.codec.pad_id, self.codec.stop_ids[0])
        self.model_config = model.config
        try:
            check_lengths(cfg, model.config.max_position_embeddings)
        except LengthError as exc:
            raise ConfigError(str(exc)) from exc
        opt_cfg = cfg.optimizer if cfg.optimizer.total_steps != OptimizerConfig().total_steps else \
            dataclasses.replace(cfg.optimizer, total_steps=max(cfg.train.steps, 1))
        self.optimizer = make_optimizer(opt_cfg)
        self.loss_config = cfg.loss if cfg.loss.max_new_tokens else cfg.loss.replace(
            max_new_tokens=cfg.rollout.max_new_tokens)
        self.graphdef, self.state = create_train_state(model, self.optimizer, seed=cfg.train.seed,
                                                       with_reference=self.loss_config.kl_coef > 0)
        self.placement = make_placement(cfg.mesh, self.state, self.optimizer)
        self.state = self.placement.place_state(self.state)
        self.step_fn = make_train_step(self.graphdef, self.optimizer, self.loss_config,
                                       micro_batches=cfg.train.micro_batches,
                                       temperature=cfg.rollout.temperature,
                                       logprob_chunk=cfg.train.logprob_chunk,
                                       learning_rate=learning_rate_schedule(opt_cfg),
                                       state_sharding=self.placement.state_sharding,
                                       completion_window=cfg.rollout.max_new_tokens)
        self.engine = self._make_engine(model)
        self.warmstart_step_fn = None
        executor = make_executor(cfg.env.executor, cfg.env.sandbox, cfg.env.workers,
                                 ray_address=cfg.env.ray_address, ray_actors=cfg.env.ray_actors)
        # Each process executes its share of a step's executions; every process sees all results.
        self.pool = SharedExecutions(executor, executed=_ran_in_a_sandbox)
        self.limits = Limits(timeout_s=cfg.env.timeout_s)
        self.exec_cache = make_execution_cache(cfg.env.cache_executions, cfg.env.exec_cache_dir, cfg.env.exec_cache_mb)
        self.buffer = EvolvingBuffer(cfg.curriculum)
        self.buffer.add_roots(np.arange(len(self.task_ids)))
        self.sampler = LearnabilitySampler(seed=cfg.train.seed)
        self.curriculum_log = MetricsLog()
        self.history: list[dict[str, Any]] = []
        self.summary_extra: dict[str, Any] = {}  # mode-specific summary entries (async statistics)
        self.step = 0
        self.checkpointer = run_files.checkpointer(self.run_dir, cfg.train.keep_checkpoints)
        if self.writer:
            run_files.write_run_files(self.run_dir, self.model_config, cfg.to_dict())
        self.warm_started = False
        self._maybe_resume()
        self.heldout = heldout_tracker(self) if cfg.train.heldout_eval else None
        self._metrics_file = self._tensorboard = None
        self.echo(f"run {self.run_dir}: {len(self.task_ids)} tasks ({cfg.env.tasks}), {self.codec.mode} mode, "
                  f"model {cfg.model.preset or cfg.model.hf}, {self.placement.describe()}, "
                  f"sandbox {executor.sandbox_name} ({executor.name})")

    # ------------------------------------------------------------------------- setup
    def _make_engine(self, model):
        if self.cfg.rollout.engine == "jax":
            from ace_jax.inference.engine import JaxEngine
            rows = self.cfg.rollout.group_size * self.cfg.rollout.states_per_step * self.cfg.rollout.oversample
            return JaxEngine(model, eos_token_ids=self.codec.stop_ids, seed=self.cfg.train.seed,
                             buckets=engine_buckets(self.cfg, rows), scheduler=self.cfg.rollout.scheduler,
                             kv_pool_tokens=self.cfg.rollout.kv_pool_tokens or None,
                             decode_moe_backend=self.cfg.rollout.decode_moe_backend or None)
        from ace_jax.checkpoint import hf
        from rollout.sglang import SGLangEngine
        # SGLang loads weights from disk: the initial policy is exported once; every update
        # exports the trainer's params to a fresh directory (see rollout/sglang.py).
        model_path = self.cfg.model.hf
        if model_path is None and not self.cfg.rollout.sglang_urls:
            model_path = os.path.join(self.run_dir, "hf_initial")
            hf.save(model, model_path, dtype="bfloat16")
        graphdef, mc = self.graphdef, self.model_config
        replay = self.loss_config.routing_replay and mc.is_moe  # R3 from SGLang when it returns them
        return SGLangEngine.from_config(
            self.cfg.rollout, model_path=model_path,
            exporter=lambda params, out: hf.save(nnx.merge(graphdef, params), out, dtype="bfloat16"),
            routed_experts_shape=(mc.num_moe_layers, mc.num_experts_per_tok) if replay else None)

    def _maybe_resume(self) -> None:
        if self.checkpointer.latest_step() is None:
            return
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
        restored = self.checkpointer.restore(abstract)
        self.state = restored.state
        self.step = restored.step
        if restored.meta and "buffer" in restored.meta:  # absent in a run made by `ace-jax import`
            self.warm_started = True  # a run's own checkpoints follow its warm start (step 0: the warm start's)
            self.buffer, sampler_state, self.history = unpack_curriculum(restored.arrays, restored.meta)
            self.sampler.load_state_dict(sampler_state)
            log_state = unpack_curriculum_log(restored.arrays, restored.meta)
            if log_state is not None:
                self.curriculum_log.load_state_dict(log_state)
        self.engine.update_weights(self.state.params)
        self.echo(f"resumed {self.run_dir} at step {self.step}")

    # ------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, Any]:
        """One synchronous step: a round of rollouts, the curriculum update, the GRPO update."""
        started = time.perf_counter()
        ids, states = self.sample_round(self.step)
        rollouts = self.execute_round(self.generate_round(self.step, ids, states))
        record = self.record_round(self.step, ids, rollouts, time.perf_counter() - started)
        record = self.learn(rollouts, record, started)
        if record.pop("updated"):
            self.engine.update_weights(self.state.params, weight_version=str(self.step + 1))
        self.step += 1
        return record

    def sample_round(self, step: int):
        """(buffer ids, states) of a round: the curriculum's draw for `step`."""
        ids = self.sampler.sample(self.buffer, self.cfg.rollout.states_per_step * self.cfg.rollout.oversample, step=step)
        return ids, [entry_state(self.buffer, int(i), self.task_ids) for i in ids]

    def generate_round(self, step: int, ids, states) -> Generated:
        cfg = self.cfg
        routed = self.loss_config.routing_replay and self.model_config.is_moe and self.engine.returns_routed_experts
        generated = generate(self.engine, self.codec, self.tasks, ids, states, group_size=cfg.rollout.group_size,
                             temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                             limits=self.limits, seed=cfg.train.seed * 1_000_003 + step, routed=routed)
        return dataclasses.replace(generated, step=step)

    def execute_round(self, generated: Generated) -> RolloutRound:
        """Execute and grade a round; its execution counts are taken with it. Async runs up to S + 1
        rounds at once, each in its own thread: the processes exchange results by round, and a
        round's exchange is forgotten once every process has sampled past it (round j is sampled
        only after round j - S - 1 is recorded, so reading round j's results from every process
        means every process has read round j - S - 1's)."""
        lag = self.cfg.train.max_staleness if self.cfg.train.mode == "async" else 0
        forget = generated.step - lag - 1
        with self.pool.round(f"round{generated.step}", f"round{forget}" if forget >= 0 else None):
            rollouts = execute(generated, self.pool, group_size=self.cfg.rollout.group_size, cache=self.exec_cache,
                               min_execution_s=self.cfg.env.min_execution_s)
            rollouts.executions = self.pool.take_counts()
        rollouts.cached_executions = 0 if self.exec_cache is None else self.exec_cache.hits
        rollouts.cache_stats = {} if self.exec_cache is None else self.exec_cache.stats()
        return rollouts

    def record_round(self, step: int, ids, rollouts: RolloutRound, rollout_s: float) -> dict[str, Any]:
        """Results into the buffer (rewards, new child states); the round's part of the step record."""
        self.buffer.record(ids, rollouts.rewards, rollouts.successes, step)
        parents, q, ops, hashes, payloads = child_records(
            [pid for pid, row in zip(ids, rollouts.results) for _ in row],
            [r for row in rollouts.results for r in row])
        children = self.buffer.add_children(parents, q, ops, hashes, payloads, step=step) if parents else np.zeros(0)
        record: dict[str, Any] = {
            "step": step, "states": int(len(ids)), "reward_mean": float(rollouts.rewards.mean()),
            "valid_rate": float(np.mean([[r.valid for r in row] for row in rollouts.results])),
            "success_rate": float(rollouts.successes.mean()), "truncated_rate": float(rollouts.truncated.mean()),
            "best_q": float(max(r.q for row in rollouts.results for r in row)),
            "children_added": int(np.sum(np.asarray(children) >= 0)), "buffer_size": int(self.buffer.size),
            "rollout_s": round(rollout_s, 3), "generate_s": round(rollouts.generate_s, 3),
            "execute_s": round(rollouts.execute_s, 3), "cached_executions": rollouts.cached_executions,
            **getattr(rollouts, "cache_stats", {})}
        record["executions"], record["executions_here"] = rollouts.executions
        record["curriculum"] = self.curriculum_log.update(self.buffer, ids, step=step)
        return record

    def learn(self, rollouts: RolloutRound, record: dict[str, Any], started: float) -> dict[str, Any]:
        """Advantages, the fixed-shape batch and the GRPO update; `record["updated"]` says if it ran."""
        k = self.cfg.rollout.states_per_step
        advantages, group_mask, n_zero = compute_advantages(
            rollouts.rewards, estimator=self.loss_config.advantage, ddof=self.loss_config.adv_ddof,
            std_eps=self.loss_config.adv_std_eps, zero_var_threshold=self.loss_config.zero_var_threshold)
        batch, n_informative = assemble_batch(rollouts, advantages, group_mask, k, self.cfg.train.length_buckets,
                                              self.codec.pad_id,
                                              rng=np.random.default_rng([self.cfg.train.seed, int(record["step"])]))
        record = {**record, "informative_groups": n_informative, "zero_variance_groups": int(n_zero),
                  "batch_tokens": int(batch.input_ids.size), "updated": bool(n_informative)}
        if n_informative:
            update_started = time.perf_counter()
            with self.placement.tracing():
                self.state, metrics = self.step_fn(self.state, self.placement.place_batch(batch))
            record.update({k2: float(v) for k2, v in metrics.items()})
            record["update_s"] = round(time.perf_counter() - update_started, 3)
        else:
            record["update_skipped_no_signal"] = 1
        record["step_s"] = round(time.perf_counter() - started, 3)
        return record

    # ------------------------------------------------------------------------- the run
    def curriculum_state(self) -> tuple[dict, dict]:
        """A copy of the buffer's and the sampler's state (what `save` and a resume need)."""
        return self.buffer.state_dict(), self.sampler.state_dict()

    def restore_curriculum(self, state: tuple[dict, dict]) -> tuple[EvolvingBuffer, LearnabilitySampler]:
        sampler = LearnabilitySampler(seed=self.cfg.train.seed)
        sampler.load_state_dict(state[1])
        return EvolvingBuffer.from_state_dict(state[0]), sampler

    def save(self, curriculum: tuple[dict, dict] | None = None) -> None:
        """Checkpoint the train state with the curriculum (default: the live buffer and sampler)."""
        buffer, sampler_state = (self.buffer, self.sampler.state_dict()) if curriculum is None else \
            (EvolvingBuffer.from_state_dict(curriculum[0]), curriculum[1])
        arrays, meta = pack_curriculum(buffer, sampler_state, self.history, self.curriculum_log.state_dict())
        self.checkpointer.save(self.step, self.state, arrays=arrays, meta=meta)

    def warm_start(self) -> None:
        """Behaviour cloning before the first RL step (`train.warmstart_steps`): spec menus in spec
        mode, the tasks' reference solutions in code mode; with its own optimizer."""
        from ace_jax.train.warmstart import warm_start, warmstart_optimizer, warmstart_state
        sft_loss = self.loss_config.replace(use_tis=False, loss="ppo", kl_coef=0.0, old_logprobs="proximal")
        sft = warmstart_optimizer(self.cfg.optimizer, self.cfg.train.warmstart_steps,  # its own moments and lr
                                  learning_rate=self.cfg.train.warmstart_learning_rate)
        sft_step = make_train_step(self.graphdef, sft.optimizer, sft_loss, micro_batches=self.cfg.train.micro_batches,
                                   temperature=self.cfg.rollout.temperature, logprob_chunk=self.cfg.train.logprob_chunk,
                                   learning_rate=sft.schedule, state_sharding=self.placement.state_sharding,
                                   completion_window=self.cfg.rollout.max_new_tokens)
        rows = self.cfg.rollout.group_size * self.cfg.rollout.states_per_step
        self.warmstart_step_fn = sft_step
        with self.placement.tracing():
            warmed = warm_start(sft_step, self.placement.place_state(warmstart_state(self.state, sft.optimizer)),
                                self.codec, self.tasks, steps=self.cfg.train.warmstart_steps,
                                rows=rows, buckets=self.cfg.train.length_buckets, seed=self.cfg.train.seed,
                                max_new_tokens=self.cfg.rollout.max_new_tokens,
                                place_batch=self.placement.place_batch, echo=self.echo,
                                child_share=self.cfg.train.warmstart_child_share)
        self.state = self.state._replace(params=warmed.params)  # RL optimizer and schedule untouched
        self.warm_started = True
        self.engine.update_weights(self.state.params, weight_version="warmstart")

    def run(self, steps: int | None = None) -> dict[str, Any]:
        total = self.cfg.train.steps if steps is None else steps
        if self.step == 0 and self.cfg.train.warmstart_steps and not self.warm_started:
            self.warm_start()   # once: `run` may be called in stages (ace-jax ablate evaluates between them)
            self.save()         # step 0 = the warm-started policy: a rerun after a crash, or a copy, skips it
        if self.heldout is not None and self.step == 0 and "before" not in self.heldout.results:
            self.heldout.measure("before")
        # Lines and events of steps after the checkpoint (a killed run) are dropped first.
        if self.writer:
            self._metrics_file = MetricsFile(os.path.join(self.run_dir, METRICS_FILE), start_step=self.step)
            self._tensorboard = TensorBoardWriter(self.run_dir, start_step=self.step)
        first, times = self.step, []
        if self.cfg.train.mode == "async":
            from ace_jax.train.learner import run_async
            run_async(self, total, self.log_step)
        else:
            while self.step < total:
                record = self.train_step()
                self.log_step(record, total, times)
                if self.step % self.cfg.train.checkpoint_every == 0 or self.step == total:
                    self.save()
        self.checkpointer.wait()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.heldout is not None and (self.step > first or "after" not in self.heldout.results):
            self.engine.update_weights(self.state.params)  # the final policy (async may serve an older one)
            self.heldout.measure("after")
            self.echo(self.heldout.table())
        return self.finish(first)

    def log_step(self, record: dict[str, Any], total: int, times: list[float]) -> None:
        """History, metrics.jsonl and the progress line of a finished step."""
        self.history.append({k: v for k, v in record.items() if k != "curriculum"})
        if self._metrics_file is not None:
            self._metrics_file.append(record)
            self._tensorboard.write(record)
        times.append(record["step_s"])
        eta = np.mean(times[-5:]) * (total - self.step)
        self._echo_share(record)
        self.echo(f"step {self.step}/{total} | reward {record['reward_mean']:.3f} | valid "
                  f"{record['valid_rate']:.2f} | success {record['success_rate']:.2f} | best q "
                  f"{record['best_q']:.3f} | informative {record['informative_groups']}/"
                  f"{self.cfg.rollout.states_per_step} | {_loss_text(record)} | "
                  f"buffer {record['buffer_size']} | executions {record['executions']} | "
                  f"{record['step_s']:.1f} s/step | ETA {eta:.0f} s")

    def _echo_share(self, record: dict[str, Any]) -> None:
        if jax.process_count() > 1:
            print(f"process {jax.process_index()}/{jax.process_count()}: executed {record['executions_here']} of "
                  f"{record['executions']} executions in step {self.step}", flush=True)

    def finish(self, first_step: int) -> dict[str, Any]:
        from ace_jax.train.plots import plot_training
        plots = []
        if not self.writer:
            return {"run_dir": self.run_dir, "steps": self.step, "process": jax.process_index()}
        if self.history:
            plots.append(plot_training(self.history, os.path.join(self.run_dir, "training.png")))
        if self.curriculum_log.records:
            path = os.path.join(self.run_dir, "curriculum.png")
            plot_metrics(self.curriculum_log.records, path)
            plots.append(path)
        last = self.history[-1] if self.history else {}
        summary = {"run_dir": self.run_dir, "steps": self.step, "steps_this_run": self.step - first_step,
                   "final_reward_mean": last.get("reward_mean"), "buffer_size": int(self.buffer.size),
                   "skipped_updates": int(self.state.skipped), "optimizer_steps": int(self.state.step),
                   "engine_compiles": getattr(self.engine, "compile_count", None),
                   "train_step_compiles": self.step_fn._cache_size(),
                   "warmstart_step_compiles": self.warmstart_step_fn._cache_size() if self.warmstart_step_fn else 0,
                   "plots": plots, **self.summary_extra,
                   **(self.heldout.summary() if self.heldout is not None else {})}
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        return summary

    def close(self) -> None:
        self.checkpointer.close()
        self.pool.close()
        self.engine.close()


def _loss_text(record: dict[str, Any]) -> str:
    """The progress line's loss, or why the step made no update (not a `loss nan`)."""
    if "loss" in record:
        return f"loss {record['loss']:.4f}"
    return "update skipped (stale round)" if record.get("update_skipped_stale") else \
        "update skipped (no informative group)"
