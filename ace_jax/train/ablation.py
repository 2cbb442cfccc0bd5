"""The curriculum ablation: arms x seeds of one experiment, the same budget per arm, compared
on a fixed evaluation rather than on training reward (each arm picks its own states).

Arms change only the curriculum: `frontier` (the default Learnability Potential), `variance`,
`p1mp`, `uniform`, and `roots-only` (`curriculum.max_children=0`: no child states). Every
`eval_every` steps each run is evaluated the same way on the fixed set: the held-out tasks and
the training tasks' roots, greedily and with `eval_seeds` seeds at the training temperature.
Per arm: training steps and rollouts (executions) until the fixed evaluation's target metric
reaches `target`, and the held-out results at the end, as mean and spread over seeds.

The warm start depends only on the seed, so it runs once per seed and its parameters are
reused by the other arms; the persistent execution cache makes repeated scripts free. Each
run saves its evaluation points in DIR/ARM/seedN/points.json as it goes: the same command again
(killed, with more seeds or arms, or on a copy of DIR) reuses the finished runs whose config is
unchanged and resumes a killed one (`ablation_points`).
Besides per-arm spreads the table pairs each arm with `frontier` seed by seed (same seed, same
warm start), which takes out the spread between seeds' warm starts.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ace_jax.config import ExperimentConfig, load_config
from ace_jax.evaluate import METRICS
from ace_jax.train.ablation_answers import answers_lines, answers_summary
from ace_jax.train.ablation_gain import GAIN_SHARES, curve_mean, gain_targets, lower_is_better, metric_value
from ace_jax.train.ablation_points import POINTS_FILE, load_points, move_aside, points_before, run_key, save_points
from ace_jax.train.heldout import evaluate_policy, pool_executor, spread

ARMS: dict[str, tuple[str, ...]] = {
    "frontier": ("curriculum.potential=frontier",),
    "variance": ("curriculum.potential=variance",),
    "p1mp": ("curriculum.potential=p1mp",),
    "uniform": ("curriculum.potential=uniform",),
    "roots-only": ("curriculum.max_children=0",),
}
SETS = ("heldout", "roots")   # the fixed evaluation: held-out tasks, training tasks from their roots


@dataclasses.dataclass(frozen=True)
class AblationPlan:
    config: str | None
    overrides: tuple[str, ...] = ()
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: int = 3
    eval_every: int = 1           # an evaluation costs less than a training step; coarser ones quantise steps to target
    eval_seeds: int = 8           # sampled episodes per task: their mean moves smoothly, a greedy draft jumps
    # Greedy q on the training roots moves in jumps of one task's argmax spec and is what root
    # groups train directly; the sampled q on held-out tasks rises smoothly and measures transfer.
    target_metric: str = "heldout.sampled.mean_best_q"
    target: float = 0.85
    out: str = "runs/ablation"

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; allowed: {list(ARMS)}")
        if self.seeds < 1 or self.eval_every < 1 or self.eval_seeds < 0:
            raise ValueError("seeds and eval_every must be >= 1 and eval_seeds >= 0")
        s, kind, metric = (self.target_metric.split(".") + ["", ""])[:3]
        if s not in SETS or kind not in ("greedy", "sampled") or metric not in METRICS:
            raise ValueError(f"target metric {self.target_metric!r} must be <{'|'.join(SETS)}>.<greedy|sampled>."
                             f"<{'|'.join(METRICS)}>")


def first_reaching(points: Sequence[dict[str, Any]], name: str, target: float) -> dict[str, Any] | None:
    """The first evaluation point whose metric reaches `target` (lower is better for steps to first valid)."""
    lower = lower_is_better(name)
    for p in points:
        v = metric_value(p["eval"], name)
        if (v <= target) if lower else (v >= target):
            return p
    return None


def _run_key(plan: AblationPlan, arm: str, seed: int) -> str:
    return run_key(arm_config(plan, arm, seed, warm=True).to_dict(), plan.eval_every, plan.eval_seeds)


def finished_points(plan: AblationPlan, arm: str, seed: int) -> list[dict[str, Any]] | None:
    """The points of an earlier, finished run of this (arm, seed) with the same config, else None."""
    saved = load_points(run_path(plan, arm, seed), _run_key(plan, arm, seed))
    return saved.points if saved is not None and saved.complete else None


def run_path(plan: AblationPlan, arm: str, seed: int) -> str:
    return os.path.join(plan.out, arm, f"seed{seed}")


def arm_config(plan: AblationPlan, arm: str, seed: int, warm: bool) -> ExperimentConfig:
    cfg = load_config(plan.config, [*plan.overrides, *ARMS[arm], f"train.seed={seed}",
                                    f"train.run_dir={run_path(plan, arm, seed)}",
                                    "train.heldout_eval=false"])
    return cfg if warm else dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmstart_steps=0))


def _trainer(plan: AblationPlan, arm: str, seed: int, warm: bool, echo: Callable[[str], None]):
    """The run's trainer and the points it keeps: a fresh one, or one resumed from a checkpoint
    with the saved points before it; a run whose points cannot be kept is moved aside first."""
    from ace_jax.train.loop import Trainer

    cfg, path, key = arm_config(plan, arm, seed, warm=warm), run_path(plan, arm, seed), _run_key(plan, arm, seed)
    saved = load_points(path, key)
    if saved is None and os.path.exists(os.path.join(path, POINTS_FILE)):
        echo(f"{arm} seed {seed}: {path} holds a run of another config; moved to {move_aside(path)}")
    trainer = Trainer(cfg, echo=lambda line: None)
    if trainer.step == 0 and not trainer.warm_started:
        return trainer, []
    kept = points_before(saved, trainer.step, cfg.train.steps, plan.eval_every)
    if kept is not None:
        echo(f"{arm} seed {seed}: resumed at step {trainer.step}, {len(kept)} earlier evaluation(s) kept")
        return trainer, kept
    trainer.close()
    echo(f"{arm} seed {seed}: {path} holds a checkpoint at step {trainer.step} without this config's evaluations "
         f"before it; moved to {move_aside(path)}, trained again")
    return Trainer(cfg, echo=lambda line: None), []


def run_one(plan: AblationPlan, arm: str, seed: int, warm_params: dict[int, Any],
            echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train one (arm, seed) for the config's `train.steps`; the fixed evaluation every `eval_every`
    steps, saved after each one."""
    from ace_jax.train.loop import select_tasks

    trainer, points = _trainer(plan, arm, seed, seed not in warm_params, echo)
    cfg, path, key = trainer.cfg, run_path(plan, arm, seed), _run_key(plan, arm, seed)
    try:
        fresh = trainer.step == 0
        if fresh and not trainer.warm_started and seed in warm_params:   # the seed's warm start, run by an earlier arm
            trainer.state = trainer.state._replace(params=jax.tree.map(jax.numpy.asarray, warm_params[seed]))
            trainer.engine.update_weights(trainer.state.params, weight_version="warmstart")
        trainer.run(trainer.step)      # the warm start, when this arm runs it
        if fresh and seed not in warm_params:   # a run resumed later than step 0 holds no warm start to share
            warm_params[seed] = jax.tree.map(np.asarray, trainer.state.params)
        sets = {"heldout": select_tasks(trainer.cfg.train.heldout_tasks), "roots": trainer.tasks}
        execute = pool_executor(trainer.pool, trainer.exec_cache)

        def fixed_eval() -> dict[str, Any]:
            return {name: evaluate_policy(trainer.engine, trainer.codec, tasks, execute,
                                          steps=cfg.train.heldout_steps, seeds=plan.eval_seeds,
                                          temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                          limits=trainer.limits, seed=1_000 + seed) for name, tasks in sets.items()}

        while True:
            groups = sum(h["states"] for h in trainer.history)
            rollouts = groups * cfg.rollout.group_size
            reward = float(np.mean([h["reward_mean"] for h in trainer.history[-plan.eval_every:]])) \
                if trainer.history else float("nan")
            points.append({"arm": arm, "seed": seed, "step": trainer.step, "rollouts": rollouts,
                           "groups": groups, "zero_variance_groups": sum(h["zero_variance_groups"] for h in trainer.history),
                           "train_reward": reward, "eval": fixed_eval()})
            done = trainer.step >= cfg.train.steps
            save_points(path, key, points, complete=done)
            echo(f"{arm} seed {seed} step {trainer.step}: {plan.target_metric} "
                 f"{metric_value(points[-1]['eval'], plan.target_metric):.3f} | train reward {reward:.3f}")
            if done:
                return points
            trainer.run(min(trainer.step + plan.eval_every, cfg.train.steps))
    finally:
        trainer.close()


def censored_steps(run: list[dict[str, Any]], reached: dict[str, Any] | None, eval_every: int) -> int:
    """Steps to the target of one run; a run that never reaches it counts as its last evaluated
    step plus `eval_every` (a lower bound on its true steps to target)."""
    return int(reached["step"]) if reached is not None else int(run[-1]["step"]) + eval_every


def _stored(evaluation: dict[str, Any], kind: str, metric: str, field: str = "mean") -> float:
    """One set's greedy value, or a sampled metric's `field`; NaN for points saved before the metric existed."""
    value = evaluation[kind].get(metric)
    if value is None:
        return float("nan")
    return float(value[field] if kind == "sampled" else value)


def _runs(points: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The evaluation points of each (arm, seed), in order."""
    keys = dict.fromkeys((p["arm"], p["seed"]) for p in points)
    return [[p for p in points if (p["arm"], p["seed"]) == k] for k in keys]


def summarize_arm(points: list[dict[str, Any]], plan: AblationPlan,
                  gains: dict[float, float] | None = None) -> dict[str, Any]:
    """Steps and rollouts to the target (mean and spread over the seeds that reach it, and over
    all seeds with unreached runs censored), steps to each share of the gain in `gains`
    ({share: target}, censored), the target metric's curve mean, and the final held-out metrics."""
    seeds = sorted({p["seed"] for p in points})
    runs = [[p for p in points if p["seed"] == s] for s in seeds]
    reached = [first_reaching(r, plan.target_metric, plan.target) for r in runs]
    hit = [p for p in reached if p is not None]
    gain_hits = {share: [first_reaching(r, plan.target_metric, t) for r in runs] for share, t in (gains or {}).items()}
    final = [r[-1]["eval"]["heldout"] for r in runs]
    return {
        "seeds": len(seeds), "reached": len(hit),
        "steps_to_target": spread([p["step"] for p in hit]) if hit else None,
        "steps_to_target_all": spread([censored_steps(r, p, plan.eval_every) for r, p in zip(runs, reached)]),
        "rollouts_to_target": spread([p["rollouts"] for p in hit]) if hit else None,
        "steps_to_gain": {share: spread([censored_steps(r, p, plan.eval_every) for r, p in zip(runs, hits)])
                          for share, hits in gain_hits.items()},
        "reached_gain": {share: sum(p is not None for p in hits) for share, hits in gain_hits.items()},
        "curve_mean": spread([curve_mean(r, plan.target_metric) for r in runs]),
        "final_heldout_greedy": {m: spread([_stored(f, "greedy", m) for f in final]) for m in METRICS},
        "final_heldout_sampled": {m: spread([_stored(f, "sampled", m) for f in final]) for m in METRICS}
        if plan.eval_seeds else {},
        "final_target_metric": spread([metric_value(r[-1]["eval"], plan.target_metric) for r in runs]),
        "zero_variance_share": spread([zero_variance_share(r[-1]) for r in runs]),
        "answers": answers_summary(runs),
    }


def paired_with_frontier(points: list[dict[str, Any]], plan: AblationPlan) -> dict[str, dict[str, Any]]:
    """Per arm, seed by seed against `frontier` (the same seed shares the warm start): the
    difference arm - frontier in steps to target (censored) and in the final held-out target
    metric, mean and spread, and on how many seeds frontier needed fewer / more steps."""
    def per_seed(arm: str) -> dict[int, tuple[int, float]]:
        out = {}
        for seed in sorted({p["seed"] for p in points if p["arm"] == arm}):
            run = [p for p in points if p["arm"] == arm and p["seed"] == seed]
            steps = censored_steps(run, first_reaching(run, plan.target_metric, plan.target), plan.eval_every)
            out[seed] = steps, metric_value(run[-1]["eval"], plan.target_metric)
        return out

    if not any(p["arm"] == "frontier" for p in points):
        return {}
    frontier, paired = per_seed("frontier"), {}
    for arm in dict.fromkeys(p["arm"] for p in points):
        other = per_seed(arm)
        seeds = sorted(set(frontier) & set(other))
        if arm == "frontier" or not seeds:
            continue
        d_steps = [other[s][0] - frontier[s][0] for s in seeds]
        paired[arm] = {"seeds": len(seeds), "steps": spread(d_steps),
                       "final": spread([other[s][1] - frontier[s][1] for s in seeds]),
                       "frontier_fewer": sum(d > 0 for d in d_steps), "frontier_more": sum(d < 0 for d in d_steps)}
    return paired


def zero_variance_share(point: dict[str, Any]) -> float:
    """Share of the groups sampled so far whose rewards had zero variance: rollouts the
    curriculum spent on states that teach nothing (what Learnability-Potential sampling avoids)."""
    return point["zero_variance_groups"] / point["groups"] if point["groups"] else float("nan")


def _pm(s: dict[str, float] | None, fmt: str = ".3f") -> str:
    return "-" if s is None else f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"


def markdown(summaries: dict[str, dict[str, Any]], plan: AblationPlan, steps: int,
             paired: dict[str, dict[str, Any]] | None = None, gains: dict[float, float] | None = None) -> str:
    lines = [f"Target: `{plan.target_metric}` >= {plan.target} on the fixed evaluation (held-out tasks and training "
             f"roots, every {plan.eval_every} steps, greedy + {plan.eval_seeds} seeds). {steps} training steps per run, "
             f"{_seeds_text(summaries, plan)}; mean ± spread (std over seeds; steps and rollouts over the seeds that "
             "reach the target).", "",
             "| arm | reached | steps to target | steps to target, all seeds* | rollouts to target | final target "
             "metric | held-out mean best q (sampled) | held-out valid rate (sampled) | held-out mean best q (greedy) | "
             "zero-variance groups (share sampled) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in summaries.items():
        sampled = s["final_heldout_sampled"]
        lines.append(f"| {arm} | {s['reached']}/{s['seeds']} | {_pm(s['steps_to_target'], '.1f')} | "
                     f"{_pm(s['steps_to_target_all'], '.1f')} | "
                     f"{_pm(s['rollouts_to_target'], '.0f')} | {_pm(s['final_target_metric'])} | "
                     f"{_pm(sampled.get('mean_best_q'))} | {_pm(sampled.get('valid_rate'))} | "
                     f"{_pm(s['final_heldout_greedy']['mean_best_q'])} | {_pm(s['zero_variance_share'], '.2f')} |")
    lines += ["", f"*A run that does not reach the target counts as {steps} + {plan.eval_every} steps (a lower "
              "bound), so a ratio against an arm with such runs is an upper bound."]
    if paired:
        lines += ["", "Paired with `frontier`, seed by seed (arm - frontier; positive steps: frontier got there first):",
                  "", "| arm | seeds | steps to target, all seeds | frontier fewer / more steps | final target metric |",
                  "|---|---|---|---|---|"]
        lines += [f"| {arm} | {d['seeds']} | {d['steps']['mean']:+.1f} ± {d['steps']['std']:.1f} | "
                  f"{d['frontier_fewer']} / {d['frontier_more']} | {d['final']['mean']:+.3f} ± {d['final']['std']:.3f} |"
                  for arm, d in paired.items()]
    lines += [""] + _ratio_lines(summaries, "target")
    if gains:
        lines += _gain_table(summaries, plan, gains)
    lines += answers_lines(summaries)
    return "\n".join(lines) + "\n"


def _seeds_text(summaries: dict[str, dict[str, Any]], plan: AblationPlan) -> str:
    done = max((s["seeds"] for s in summaries.values()), default=0)
    return f"{plan.seeds} seed(s) per arm" + (f" ({done} run so far)" if done < plan.seeds else "")


def step_ratios(summaries: dict[str, dict[str, Any]], share: float | None = None) -> dict[str, float]:
    """frontier's mean steps to target (all seeds, censored) over each other arm's; with `share`,
    to that share of the gain. The claim is <= 0.6. NaN where no run of either arm got there:
    both are then the same censored number and their ratio says nothing."""
    if "frontier" not in summaries:
        return {}

    def steps_and_reached(s: dict[str, Any]) -> tuple[float, int]:
        if share is None:
            return s["steps_to_target_all"]["mean"], s["reached"]
        return s["steps_to_gain"][share]["mean"], s["reached_gain"][share]

    f, f_hit = steps_and_reached(summaries["frontier"])
    out = {}
    for arm, s in summaries.items():
        if arm != "frontier":
            o, o_hit = steps_and_reached(s)
            out[arm] = f / o if o and (f_hit or o_hit) else float("nan")
    return out


def _ratio_lines(summaries: dict[str, dict[str, Any]], what: str, share: float | None = None) -> list[str]:
    return [f"ratio frontier/{arm} steps to {what} (all seeds): "
            + (f"{r:.2f}" if np.isfinite(r) else "not measured (no run of either arm got there)")
            for arm, r in step_ratios(summaries, share).items()]


def _gain_table(summaries: dict[str, dict[str, Any]], plan: AblationPlan, gains: dict[float, float]) -> list[str]:
    shares = list(gains)
    lines = ["", f"Without a chosen target: steps to a share of the gain in `{plan.target_metric}`, from the step-0 "
             f"mean of all runs to the best arm's final mean ({', '.join(f'{s:.0%}: {t:.3f}' for s, t in gains.items())}; "
             "censored as above), and the curve mean (the metric's mean over the evaluations after step 0).", "",
             "| arm | " + " | ".join(f"steps to {s:.0%} of the gain | reached" for s in shares) + " | curve mean |",
             "|---|" + "---|---|" * len(shares) + "---|"]
    for arm, s in summaries.items():
        cells = [f"{_pm(s['steps_to_gain'][sh], '.1f')} | {s['reached_gain'][sh]}/{s['seeds']}" for sh in shares]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_pm(s['curve_mean'])} |")
    lines.append("")
    for sh in shares:
        lines += _ratio_lines(summaries, f"{sh:.0%} of the gain", sh)
    return lines


def flat_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row per evaluation point: arm, seed, step, rollouts, train reward, every metric."""
    rows = []
    for p in points:
        row = {k: p[k] for k in ("arm", "seed", "step", "rollouts", "groups", "zero_variance_groups", "train_reward")}
        for s, ev in p["eval"].items():
            for m in METRICS:
                row[f"{s}.greedy.{m}"] = _stored(ev, "greedy", m)
                if ev["sampled"]:
                    row[f"{s}.sampled.{m}"] = _stored(ev, "sampled", m)
                    row[f"{s}.sampled.{m}.std"] = _stored(ev, "sampled", m, "std")
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(points: list[dict[str, Any]], plan: AblationPlan, path: str) -> None:
    """Held-out mean best q and valid rate (sampled), the target metric and training reward over
    steps, per arm: mean over seeds with a band of one std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8), layout="constrained")
    kind = "sampled" if plan.eval_seeds else "greedy"
    panels = [(f"heldout.{kind}.mean_best_q", "held-out mean best q"), (f"heldout.{kind}.valid_rate",
              "held-out valid rate"), (plan.target_metric, f"target: {plan.target_metric}"),
              ("train_reward", "training reward (own states)")]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        for arm in dict.fromkeys(p["arm"] for p in points):
            by_step: dict[int, list[float]] = {}
            for p in points:
                if p["arm"] == arm:
                    v = p["train_reward"] if key == "train_reward" else metric_value(p["eval"], key)
                    by_step.setdefault(p["step"], []).append(v)
            steps = sorted(by_step)
            mean = np.array([np.nanmean(by_step[s]) if np.isfinite(by_step[s]).any() else np.nan for s in steps])
            std = np.array([np.nanstd(by_step[s]) if np.isfinite(by_step[s]).any() else np.nan for s in steps])
            ax.plot(steps, mean, marker="o", ms=3, label=arm)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        if key == plan.target_metric:
            ax.axhline(plan.target, color="gray", ls="--", lw=1)
        ax.set(title=title, xlabel="training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    FigureCanvasAgg(fig).print_png(path)


def compile_cache_dir() -> str:
    """Where the ablation keeps XLA executables: every (arm, seed) builds a new trainer and engine
    of the same shapes, which would otherwise compile again (minutes per run on 2 CPU cores).
    Beside the execution cache: $ACE_JAX_HOME/jax-cache, else ~/.cache/ace-jax/jax-cache."""
    from rollout.exec_cache import default_cache_dir
    return str(default_cache_dir().parent / "jax-cache")


def use_compile_cache() -> str:
    """Turn on JAX's persistent compilation cache unless one is set already (tests set their own)."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", compile_cache_dir())
    return jax.config.jax_compilation_cache_dir


def write_outputs(points: list[dict[str, Any]], plan: AblationPlan, steps: int) -> dict[str, Any]:
    """DIR/ablation.md, ablation.csv, ablation.png of the runs so far; returns the per-arm summaries."""
    arms = [a for a in plan.arms if any(p["arm"] == a for p in points)]
    gains = gain_targets(_runs(points), plan.target_metric, GAIN_SHARES)
    summaries = {arm: summarize_arm([p for p in points if p["arm"] == arm], plan, gains) for arm in arms}
    with open(os.path.join(plan.out, "ablation.md"), "w") as f:
        f.write(markdown(summaries, plan, steps, paired_with_frontier(points, plan), gains))
    write_csv(flat_rows(points), os.path.join(plan.out, "ablation.csv"))
    plot(points, plan, os.path.join(plan.out, "ablation.png"))
    return summaries


def run_ablation(plan: AblationPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every arm and seed; DIR/ablation.md, ablation.csv, ablation.png are rewritten after each
    run (a long ablation shows what it has so far); returns the summaries."""
    os.makedirs(plan.out, exist_ok=True)
    use_compile_cache()
    steps = load_config(plan.config, list(plan.overrides)).train.steps
    warm_params: dict[int, Any] = {}
    points: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    for seed in range(plan.seeds):          # seed-major: the warm start of a seed is shared by its arms
        for arm in plan.arms:
            run = finished_points(plan, arm, seed)
            if run is not None:
                echo(f"{arm} seed {seed}: finished before, its points reused ({run_path(plan, arm, seed)})")
            else:
                run = run_one(plan, arm, seed, warm_params, echo)
            points += run
            summaries = write_outputs(points, plan, steps)
    return summaries
