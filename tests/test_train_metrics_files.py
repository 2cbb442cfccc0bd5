"""metrics.jsonl on resume, TensorBoard event files, and the curriculum MetricsLog state."""

import glob
import json
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from ace_jax.curriculum import CurriculumConfig, EvolvingBuffer, MetricsLog
from ace_jax.curriculum.synthetic import fill_synthetic
from ace_jax.train.metrics_file import MetricsFile, read_metrics
from ace_jax.train.run_state import pack_curriculum, unpack_curriculum_log
from ace_jax.train.tensorboard import TensorBoardWriter, scalars


def _raw_events(logdir):
    """Every event in the event files under `logdir`, read from the TFRecord framing."""
    events = []
    for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def _events(logdir):
    """(step, tag, value) of every scalar under `logdir`."""
    return [(e.step, v.tag, v.simple_value) for e in _raw_events(logdir) for v in e.summary.value]


def test_metrics_file_drops_steps_after_the_resume_step_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward_mean": s / 10}) + "\n" for s in range(5)) + '{"step": 5, "rew')
    f = MetricsFile(path, start_step=3)
    assert f.dropped == 2 and [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    f.append({"step": 3, "reward_mean": 0.9})
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]
    MetricsFile(tmp_path / "new.jsonl", start_step=0).append({"step": 0})
    assert read_metrics(tmp_path / "new.jsonl") == [{"step": 0}]


def test_scalars_flatten_numbers_and_skip_lists_text_and_nan():
    record = {"step": 4, "reward_mean": 0.5, "informative_groups": 3, "update_skipped_no_signal": True,
              "curriculum": {"size": 7, "lp_hist": [1, 2], "root_share": float("nan")}, "run": "x"}
    assert dict(scalars(record)) == {"reward_mean": 0.5, "informative_groups": 3.0, "curriculum/size": 7.0}


def test_tensorboard_events_hold_the_records_and_a_resume_purges_later_steps(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    for s in range(3):
        writer.write({"step": s, "reward_mean": 0.1 * s, "curriculum": {"size": 10 + s}})
    writer.close()
    events = _events(tmp_path / "tensorboard")
    assert [(s, t) for s, t, _ in events] == [(0, "reward_mean"), (0, "curriculum/size"), (1, "reward_mean"),
                                              (1, "curriculum/size"), (2, "reward_mean"), (2, "curriculum/size")]
    assert np.allclose([v for _, t, v in events if t == "reward_mean"], [0.0, 0.1, 0.2])
    resumed = TensorBoardWriter(tmp_path, start_step=2)
    resumed.write({"step": 2, "reward_mean": 0.7})
    resumed.close()
    # The resumed writer records a purge marker (session log) so TensorBoard drops the old step 2.
    events = _raw_events(tmp_path / "tensorboard")
    purges = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert purges == [2]


def test_metrics_log_state_round_trips_through_the_checkpoint_payload():
    buffer = EvolvingBuffer(CurriculumConfig(capacity=64))
    ids = fill_synthetic(buffer, 40, np.random.default_rng(0), n_tasks=4)
    log = MetricsLog()
    log.update(buffer, ids[:4], step=0)
    arrays, meta = pack_curriculum(buffer, {"rng": {}}, [], log.state_dict())
    meta = json.loads(json.dumps(meta))   # the checkpoint stores meta as JSON
    restored = MetricsLog()
    restored.load_state_dict(unpack_curriculum_log(arrays, meta))
    assert json.dumps(restored.records) == json.dumps(log.records)
    a = log.update(buffer, ids[4:8], step=1)
    b = restored.update(buffer, ids[4:8], step=1)
    assert a == b
    assert unpack_curriculum_log(*pack_curriculum(buffer, {"rng": {}}, [])) is None
