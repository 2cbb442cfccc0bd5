"""Mapping between buffer entries and environment states, and step results -> buffer children."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ace_jax.curriculum import EvolvingBuffer
from rollout.env.execute import StepResult
from rollout.env.state import ChildPayload, State

PAYLOAD_KEY = "child"


def entry_state(buffer: EvolvingBuffer, entry_id: int, task_ids: Sequence[str]) -> State:
    """The environment state of a buffer entry (roots have no payload)."""
    fields = buffer.fields(np.array([entry_id]), ["task_id", "depth"])
    task = task_ids[int(fields["task_id"][0])]
    payload = buffer.payload(entry_id)
    if not payload or PAYLOAD_KEY not in payload:
        return State(task)
    return ChildPayload.from_dict(json.loads(payload[PAYLOAD_KEY])).to_state(int(fields["depth"][0]))


def child_records(parent_ids: Sequence[int], results: Sequence[StepResult]):
    """(parents, q, operators, hashes, payloads) of the executed results that can become states."""
    parents, q, ops, hashes, payloads = [], [], [], [], []
    for parent, result in zip(parent_ids, results):
        if result.payload is None:  # the response did not parse: nothing ran
            continue
        p = result.payload
        parents.append(int(parent))
        q.append(float(p.q))
        ops.append("improve" if p.valid else "debug")
        hashes.append(int(p.content_hash))
        payloads.append({PAYLOAD_KEY: json.dumps(p.to_dict())})
    return parents, q, ops, hashes, payloads
