"""Bounded staleness: the gate's admission and turn order, with the real producer thread.

Property: whatever the (random) durations of sampling, generation, execution and update, no
update uses a round staler than S, no round is thrown away, generations and updates never
overlap, each round's version is max(start, j - S), and round j is sampled from a curriculum
holding exactly rounds start .. j - S - 1 (so the states sampled do not depend on timing).
"""

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ace_jax.train.producer import RolloutProducer
from ace_jax.train.staleness import StalenessGate


class TimedRounds:
    """Rounds whose phases take the given durations; flags a generation overlapping an update."""

    def __init__(self, gen_s, exec_s):
        self.gen_s, self.exec_s = gen_s, exec_s
        self.engine = self
        self.device_busy = threading.Lock()
        self.overlaps = 0
        self.weights: list[int] = []
        self.recorded: list[int] = []            # rounds recorded into the curriculum, in order
        self.seen: dict[int, list[int]] = {}     # round -> the rounds recorded when it was sampled
        self.executing = self.most_executing = 0  # rounds executing now, and at most at once
        self.count_lock = threading.Lock()

    def update_weights(self, params, weight_version=None):
        self.weights.append(int(weight_version))

    def sample_round(self, step):
        self.seen[step] = list(self.recorded)
        return np.array([step, step]), ["a", "b"]

    def generate_round(self, step, ids, states):
        if not self.device_busy.acquire(blocking=False):
            self.overlaps += 1
            self.device_busy.acquire()
        time.sleep(self.gen_s[step % len(self.gen_s)])
        self.device_busy.release()
        return step

    def execute_round(self, generated):
        with self.count_lock:
            self.executing += 1
            self.most_executing = max(self.most_executing, self.executing)
        time.sleep(self.exec_s[generated % len(self.exec_s)])
        with self.count_lock:
            self.executing -= 1
        return generated

    def record_round(self, step, ids, rollouts, rollout_s):
        self.recorded.append(step)
        return {"step": step}

    def curriculum_state(self):
        return None


def _learn_all(s, start, total, gen_s, exec_s, learn_s):
    maker = TimedRounds(gen_s, exec_s)
    gate = StalenessGate(s, start, total)
    producer = RolloutProducer(maker, gate, start, total).start()
    used = []
    try:
        for step in range(start, total):
            while not gate.wait_turn(step, 0.01):
                pass
            rnd = None
            while rnd is None:
                rnd = producer.next_round(0.01)
            assert rnd.index == step and rnd.record == {"step": step}
            with maker.device_busy:
                time.sleep(learn_s[step % len(learn_s)])
            used.append((step, rnd.version))
            gate.publish(step + 1, params=step + 1)
    finally:
        left = producer.stop()
    return used, left, maker


durations = st.lists(st.sampled_from([0.0, 0.001, 0.005, 0.02]), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=st.integers(0, 3), start=st.integers(0, 3), rounds=st.integers(1, 8),
       gen_s=durations, exec_s=durations, learn_s=durations)
def test_no_update_uses_a_round_staler_than_s(s, start, rounds, gen_s, exec_s, learn_s):
    used, left, maker = _learn_all(s, start, start + rounds, gen_s, exec_s, learn_s)
    assert [step for step, _ in used] == list(range(start, start + rounds))
    for step, version in used:
        assert 0 <= step - version <= s
        assert version == max(start, step - s)  # the same on every process, whatever the timing
    assert left == 0 and maker.overlaps == 0
    assert maker.most_executing <= s + 1  # rounds k .. k + S at most
    assert maker.weights == sorted(maker.weights)  # the engine only moves forward
    for j in range(start, start + rounds):   # what each round was sampled from, whatever the timing
        assert maker.seen[j] == list(range(start, max(start, j - s))), (j, maker.seen)


def test_staleness_zero_alternates_like_the_synchronous_loop():
    used, _, maker = _learn_all(0, 0, 5, [0.002], [0.01], [0.002])
    assert used == [(j, j) for j in range(5)]
    assert maker.seen == {j: list(range(j)) for j in range(5)}
    assert maker.weights == [1, 2, 3, 4]


@pytest.mark.parametrize("s", [0, 1, 2])
def test_rounds_within_the_staleness_bound_execute_at_once(s):
    # executions far longer than generation and update: S + 1 rounds are in flight together
    used, _, maker = _learn_all(s, 0, 6, [0.001], [0.25], [0.001])
    assert [step for step, _ in used] == list(range(6))
    assert maker.most_executing == s + 1


def test_capacity_is_areals_formula_in_rounds():
    gate = StalenessGate(2, start=4, total=100)
    assert gate.capacity() == 3  # (S + version + 1) - generated = 7 - 4
    for j in range(4, 7):
        gate.round_generated(j)
    assert gate.capacity() == 0 and not gate.wait_admitted(0.0)
    gate.publish(5, params=None)
    assert gate.capacity() == 1
    assert StalenessGate(2, start=0, total=1).capacity() == 1  # never past the run's last round


def test_stop_drops_and_counts_rounds_in_flight():
    maker = TimedRounds([0.0], [0.05])
    gate = StalenessGate(2, 0, 10)
    producer = RolloutProducer(maker, gate, 0, 10).start()
    while gate.generated < 3:
        time.sleep(0.005)
    assert producer.stop() == 3 * 2  # three rounds of two groups, none handed over


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_staleness must be >= 0"):
        StalenessGate(-1, 0, 3)
    with pytest.raises(ValueError, match="start step 5 must be in 0..total"):
        StalenessGate(1, 5, 3)
    gate = StalenessGate(1, 0, 3)
    with pytest.raises(RuntimeError, match="round 1 generated out of order"):
        gate.round_generated(1)
    with pytest.raises(RuntimeError, match="version 2 published after 0"):
        gate.publish(2, None)
