"""Logits equal transformers' Qwen3 / Qwen3-MoE (fp32, CPU) on tiny random configs, via HF load."""

import numpy as np
import pytest
import jax.numpy as jnp

from ace_jax.checkpoint import hf
from ace_jax.models import get_config
from helpers.hf_models import hf_logits, random_hf_model

TOL = 1e-4

# (name, overrides): norm_topk_prob on/off, GQA ratios 1/2/4, head_dim != hidden/heads,
# tied/untied, mlp_only_layers, decoder_sparse_step, dense.
CASES = {
    "moe-norm-gqa2-mlponly": ("tiny-moe", {}),
    "moe-nonorm-gqa1-tied": ("tiny-moe", dict(norm_topk_prob=False, num_key_value_heads=4,
                                              tie_word_embeddings=True, mlp_only_layers=())),
    "moe-gqa4-sparse-step2": ("tiny-moe", dict(num_key_value_heads=1, decoder_sparse_step=2,
                                               mlp_only_layers=(), head_dim=8, num_hidden_layers=4)),
    "dense-tied-gqa2": ("tiny-dense", {}),
    "dense-untied-gqa4": ("tiny-dense", dict(tie_word_embeddings=False, num_key_value_heads=1, head_dim=24)),
}


def _batch(vocab, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0   # left padding
    mask[2, 9:] = 0   # right padding
    return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    preset, overrides = CASES[case]
    cfg = get_config(preset, **overrides)
    torch_model = random_hf_model(cfg, seed=len(case))
    torch_model.save_pretrained(tmp_path)
    model = hf.load(tmp_path, dtype="float32")
    assert model.config == cfg.replace(param_dtype='float32')
    ids, mask = _batch(cfg.vocab_size)
    theirs = hf_logits(torch_model, ids, mask)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    assert np.abs(ours - theirs)[valid].max() <= TOL
    # Unpadded batch, no mask at all.
    theirs = hf_logits(torch_model, ids)
    ours = np.asarray(model(jnp.asarray(ids)))
    assert np.abs(ours - theirs).max() <= TOL


def test_layer_runs_follow_sparse_rules():
    cfg = get_config("tiny-moe", num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=(3,))
    # moe iff (i+1) % 2 == 0 and i not in mlp_only -> layers 1, 5
    assert [cfg.layer_is_moe(i) for i in range(6)] == [False, True, False, False, False, True]
    assert cfg.layer_runs() == [(False, 0, 1), (True, 1, 1), (False, 2, 3), (True, 5, 1)]
