"""train.mode async on two processes sharing one mesh equals one process on that mesh.

The staleness gate fixes the order of generations and updates whatever the timing, so every
process takes the same steps with the same weights (and shares the executions)."""

import pytest

from tests.test_multihost import STEPS, _launch, _metrics, warm_runs

ASYNC = ("train.mode=async", "train.max_staleness=1")


@pytest.mark.slow
def test_async_on_two_processes_equals_one_process(tmp_path):
    single, multi = warm_runs(tmp_path, ("single", "multi"), extra=ASYNC)
    _launch(single, devices=8, processes=1, extra=ASYNC)
    _launch(multi, devices=4, processes=2, extra=ASYNC)
    one, two = _metrics(single), _metrics(multi)
    assert [r["step"] for r in two] == list(range(STEPS))
    # Equal on every step (losses to rounding), from one warm start (see tests/test_multihost.py).
    for a, b in zip(one, two):
        for key in ("reward_mean", "informative_groups", "executions", "staleness", "weight_version"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
        assert b["staleness"] <= 1
