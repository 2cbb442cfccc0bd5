"""Fixed-shape update batches from a rollout round: k groups, informative ones first.

Groups whose rewards have (near) zero variance carry no signal; the batch holds up to k
informative groups and pads the rest with fully masked groups, so its shape never changes.
When more than k groups are informative, k of them are drawn uniformly at random: the sampler
lists roots first, so keeping the first k would over-represent roots (about half the batch
with oversample 2 instead of `curriculum.root_mix`).
"""

from __future__ import annotations

import numpy as np

from ace_jax.train.batch import TrainBatch, make_batch
from ace_jax.train.rollouts import RolloutRound


def choose_groups(group_mask: np.ndarray, k: int,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(group indices [k], informative flags [k]): informative groups first, then fillers.

    Beyond k informative groups, k are drawn uniformly without replacement with `rng`
    (default: a fixed seed), kept in their original order."""
    group_mask = np.asarray(group_mask, bool)
    if group_mask.size == 0:
        raise ValueError("no groups to build a batch from")
    informative = np.flatnonzero(group_mask)
    if informative.size > k:
        rng = np.random.default_rng(0) if rng is None else rng
        informative = np.sort(rng.choice(informative, size=k, replace=False))
    fillers = np.flatnonzero(~group_mask)
    need = k - informative.size
    if fillers.size:
        fillers = np.resize(fillers, need)
    else:  # every group is informative but fewer than k: repeat them, masked
        fillers = np.resize(informative, need)
    chosen = np.concatenate([informative, fillers]).astype(np.int64)
    flags = np.zeros(k, bool)
    flags[:informative.size] = True
    return chosen, flags


def assemble_batch(rollouts: RolloutRound, advantages: np.ndarray, group_mask: np.ndarray, k: int,
                   buckets: tuple[int, ...], pad_id: int,
                   rng: np.random.Generator | None = None) -> tuple[TrainBatch, int]:
    """The update batch ([k * G] rows) and the number of informative groups in it."""
    chosen, flags = choose_groups(group_mask, k, rng)
    prompts, completions, adv, lps, keep, routed = [], [], [], [], [], []
    for g, informative in zip(chosen, flags):
        for j, completion in enumerate(rollouts.completions[g]):
            prompts.append(rollouts.prompts[g])
            completions.append(completion)
            lps.append(rollouts.logprobs[g][j])
            adv.append(float(advantages[g, j]) if informative else 0.0)
            keep.append(informative)
            if rollouts.routed_experts is not None:
                routed.append(rollouts.routed_experts[g][j])
    batch = make_batch(prompts, completions, adv, lps, pad_id=pad_id, buckets=buckets,
                       routed_experts=routed if rollouts.routed_experts is not None else None)
    loss_mask = batch.loss_mask * np.asarray(keep, batch.loss_mask.dtype)[:, None]
    return batch._replace(loss_mask=loss_mask), int(flags.sum())
