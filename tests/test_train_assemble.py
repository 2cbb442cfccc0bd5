"""Update-batch group choice: with oversampling, roots keep their `root_mix` share."""

import numpy as np

from ace_jax.curriculum import CurriculumConfig, EvolvingBuffer, LearnabilitySampler
from ace_jax.curriculum.synthetic import fill_synthetic
from ace_jax.train.assemble import choose_groups


def test_oversampled_batches_keep_the_root_mix():
    """The sampler lists roots first; choosing the first k informative groups gave roots about
    twice their share with oversample 2. Every group informative here, so the batch root share
    must equal the sampled share, i.e. root_mix."""
    cfg = CurriculumConfig(capacity=400, root_mix=0.25, cooldown_groups=100)
    buffer = EvolvingBuffer(cfg)
    fill_synthetic(buffer, 300, np.random.default_rng(0), n_tasks=16)
    sampler = LearnabilitySampler(seed=1)
    roots = set(buffer.root_ids.tolist())
    k, oversample, shares = 8, 2, []
    rng = np.random.default_rng(2)
    for step in range(400):
        ids = sampler.sample(buffer, k * oversample)
        chosen, flags = choose_groups(np.ones(ids.size, bool), k, rng)
        assert flags.all() and np.unique(chosen).size == k
        shares.append(np.mean([int(ids[g]) in roots for g in chosen]))
    assert abs(np.mean(shares) - cfg.root_mix) < 0.03, np.mean(shares)


def test_fewer_informative_groups_than_k_are_all_kept_then_padded():
    mask = np.array([False, True, False, True, False])
    chosen, flags = choose_groups(mask, 4, np.random.default_rng(0))
    assert chosen[:2].tolist() == [1, 3] and flags.tolist() == [True, True, False, False]
    assert set(chosen[2:].tolist()) <= {0, 2, 4}


def test_the_random_choice_is_reproducible_from_its_generator():
    mask = np.ones(12, bool)
    a = choose_groups(mask, 4, np.random.default_rng(7))[0]
    b = choose_groups(mask, 4, np.random.default_rng(7))[0]
    assert a.tolist() == b.tolist() and a.tolist() == sorted(a.tolist())
