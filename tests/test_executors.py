"""The executors behind `env.executor`: `local` threads and `ray` actors on a real local Ray cluster.

Both run the trainer's own per-item function (parse, execute, grade, reward) and must give the
same results for the same responses; a dead actor is retried elsewhere and counted; the public
data is shipped once and the private answers never reach an actor.
"""

import sys
import threading
import time

import pytest
import ray

from ace_jax.config import ConfigError, load_config
from ace_jax.train.rollouts import ExecutionCache, _run_one
from rollout.env.prepare import prepare_builtin
from rollout.executors import make_executor
from rollout.executors.ray_executor import pack
from rollout.sandbox.base import Limits, SandboxError

SPECS = ["model=tree max_depth=1", "model=ridge", "not a spec"]
LIMITS = Limits(timeout_s=60)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return prepare_builtin(tmp_path_factory.mktemp("tasks"), ids=["iris", "diabetes"])


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _items(tasks):
    return [(task, spec, "spec", False, LIMITS, 0.25) for task in tasks.values() for spec in SPECS]


def _comparable(result) -> dict:
    record = result.to_dict()
    record.pop("runtime")
    return record


def test_ray_equals_local_on_the_same_responses(tasks, ray_cluster):
    items = _items(tasks)
    with make_executor("local", "bwrap", 2) as local:
        expected = local.map(_run_one, items)
    with make_executor("ray", "bwrap", 1, ray_actors=2) as remote:
        got = ExecutionCache().run(remote, items)  # the trainer's path, through the cache
        assert remote.sandbox_name == "bwrap" and remote.retries == 0
    assert [_comparable(r) for r in got] == [_comparable(r) for r in expected]
    assert any(r.valid for r in got) and any(not r.valid for r in got)
    assert [r.reward.reward for r in got] == [r.reward.reward for r in expected]


def test_public_data_is_shipped_once_and_answers_stay(tasks, ray_cluster, tmp_path):
    task = tasks["iris"]
    cache = tmp_path / "host-cache"
    with make_executor("ray", "bwrap", 1, ray_actors=2, cache_dir=str(cache)) as executor:
        results = executor.map(_run_one, [(task, "model=tree max_depth=2", "spec", False, LIMITS, 0.0)] * 4)
        infos = ray.get([a.describe.remote() for a in executor.actors])
    assert all(r.valid for r in results) and len({i["pid"] for i in infos}) == 2
    assert list(executor.remote.shipped) == [pack(task.public_dir)[0]]  # put into the object store once
    assert sum(i["fetched"] for i in infos) == len({i["host"] for i in infos})  # fetched once per host
    [copy] = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in task.public_dir.iterdir())
    assert not any(p.name == task.answers_path.name for p in cache.rglob("*"))


SLOW = "import time\ntime.sleep(4)\nimport shutil\nshutil.copy('data/sample_submission.csv', 'submission.csv')\n"


def _run_script(sandbox, slot, item):
    task, code = item
    from rollout.env.execute import execute
    return execute(task, code, sandbox, slot=slot, limits=LIMITS)


def test_two_trainer_processes_share_one_cluster(tasks, ray_cluster):
    """Multi-host training: each process submits its own share to the same cluster; the shares'
    actors share a host (distinct slot uids and directories, one data copy) without interfering."""
    task = tasks["iris"]
    shares = [[(task, SLOW.replace("time.sleep(4)", f"print({i})"))] * 2 for i in range(2)]
    with make_executor("ray", "bwrap", 1, ray_actors=1) as first, \
            make_executor("ray", "bwrap", 1, ray_actors=1) as second:
        out = {}
        threads = [threading.Thread(target=lambda e=e, i=i: out.update({i: e.map(_run_script, shares[i])}))
                   for i, e in enumerate((first, second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    for i in range(2):
        assert [r.valid for r in out[i]] == [True, True] and all(f"{i}" in r.feedback.stdout_tail for r in out[i])


def test_a_killed_actor_is_retried_on_another_and_counted(tasks, ray_cluster):
    task = tasks["iris"]
    with make_executor("ray", "bwrap", 1, ray_actors=2) as executor:
        results = {}
        worker = threading.Thread(target=lambda: results.update(r=executor.map(_run_script, [(task, SLOW)])))
        worker.start()
        time.sleep(2.0)  # the script is running on actor 0 (slot 0)
        ray.kill(executor.actors[0], no_restart=False)
        worker.join(60)
        [result] = results["r"]
        assert result.valid and result.reward.reward > 0, result.reason
        assert executor.retries == 1


def test_failure_on_every_actor_is_an_error_not_a_reward(tasks, ray_cluster):
    with make_executor("ray", "bwrap", 1, ray_actors=1) as executor:
        ray.kill(executor.actors[0], no_restart=True)
        with pytest.raises(SandboxError, match="failed on 3 attempt"):
            executor.map(_run_script, [(tasks["iris"], SLOW)])
        assert executor.retries == 3


def test_actors_the_cluster_cannot_place_are_a_clear_error(ray_cluster):
    with pytest.raises(SandboxError, match="could not place 3 sandbox actor"):
        make_executor("ray", "bwrap", 1, ray_actors=3, placement_timeout_s=5)


def test_missing_ray_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    with pytest.raises(ImportError, match=r"ace-jax\[ray\]"):
        make_executor("ray", "bwrap", 1)


def test_executor_config_key_is_validated():
    assert load_config(overrides=["env.executor=ray", "env.ray_actors=2"]).env.executor == "ray"
    with pytest.raises(ConfigError, match="env.executor"):
        load_config(overrides=["env.executor=spark"])
    with pytest.raises(ConfigError, match="ray_actors"):
        load_config(overrides=["env.ray_actors=0"])
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("spark")


def _trainer_config(run_dir, executor: str):
    from ace_jax.commands.demo import DEMO_CONFIG
    return load_config(DEMO_CONFIG, [
        f"train.run_dir={run_dir}", "train.steps=1", "train.warmstart_steps=60", "train.checkpoint_every=1",
        "rollout.group_size=4", "rollout.states_per_step=2", "rollout.oversample=1", "rollout.max_new_tokens=24",
        "rollout.temperature=0.2",
        "env.sandbox=bwrap", "env.timeout_s=30", "curriculum.capacity=64", "train.length_buckets=[64]",
        f"env.executor={executor}", "env.workers=1", "env.ray_actors=2",
        f"env.exec_cache_dir={run_dir}-exec-cache", "train.heldout_eval=false"])  # each run executes itself


def _demo_run(run_dir, executor: str) -> tuple[list[dict], list]:
    import json

    import jax
    import numpy as np

    from ace_jax.train.loop import Trainer

    trainer = Trainer(_trainer_config(run_dir, executor), echo=lambda s: None)
    try:
        trainer.run()
        params = [np.asarray(p) for p in jax.tree.leaves(trainer.state.params)]
    finally:
        trainer.close()
    records = [{k: v for k, v in json.loads(line).items() if not (k.endswith("_s") or "time" in k)}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, params


@pytest.mark.slow
def test_demo_run_on_ray_equals_local_on_the_same_seed(tmp_path, ray_cluster):
    import shutil

    import numpy as np

    from ace_jax.train.warm_checkpoint import write_warm_checkpoint

    warm = write_warm_checkpoint(_trainer_config(tmp_path / "warm", "local"))   # one warm start for both runs
    for name in ("local", "ray"):
        shutil.copytree(warm, tmp_path / name)
    local_records, local_params = _demo_run(tmp_path / "local", "local")
    ray_records, ray_params = _demo_run(tmp_path / "ray", "ray")
    assert ray_records == local_records and len(ray_records) == 1
    assert ray_records[0]["valid_rate"] > 0 and ray_records[0]["informative_groups"] > 0  # executions and an update
    for a, b in zip(local_params, ray_params):
        np.testing.assert_array_equal(a, b)
