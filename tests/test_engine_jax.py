"""The embedded JAX engine against the model's own teacher-forced forward and transformers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from ace_jax.checkpoint import hf
from ace_jax.inference import Buckets, JaxEngine
from ace_jax.inference.buckets import pick, pow2_buckets, quarter_octave
from ace_jax.models import get_config
from rollout.engine import Completion, EngineError, GenerateRequest, RolloutEngine, SamplingParams
from tests.helpers.hf_models import random_hf_model

# One bucket per axis: every test here shares a single compiled generate (two with routed experts).
BUCKETS = Buckets(batch=(4,), prompt=(16,), generate=(16,))
PROMPTS = [[5, 17, 33, 99, 250, 7, 8], [300, 12], [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54], [9, 10, 11, 12, 13]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two random tiny-moe checkpoints (transformers models kept for reference runs)."""
    cfg = get_config("tiny-moe")
    dirs, models = [], []
    for seed in (0, 1):
        model = random_hf_model(cfg, seed=seed)
        path = tmp_path_factory.mktemp(f"tiny{seed}")
        model.save_pretrained(path)
        dirs.append(str(path))
        models.append(model)
    return dirs, models


@pytest.fixture(scope="module")
def engine(tiny):
    return JaxEngine.from_hf(tiny[0][0], buckets=BUCKETS)


@pytest.fixture(scope="module")
def model(tiny):
    return hf.load(tiny[0][0])


def greedy(max_new=12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new, **kw)


@jax.jit
def _forward(state, ids):
    out = nnx.merge(_GRAPH[0], state).forward(ids)
    return out.logits, out.router.expert_ids


_GRAPH: list = []


def teacher_forced(model, prompt: list[int], comp: Completion, temperature: float):
    """Logprobs of the completion's tokens and the routed experts from one forward pass.

    The sequence is right-padded to 32 tokens (causal attention and per-token routing make the
    padding invisible to earlier positions) so that one compiled forward serves every test."""
    graph, state = nnx.split(model)
    _GRAPH[:] = [graph]
    seq = prompt + comp.token_ids
    ids = np.zeros((1, 32), np.int32)
    ids[0, :len(seq)] = seq
    logits, routed = _forward(state, ids)
    t = 1.0 if temperature < 1e-6 else temperature
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0]) / t, axis=-1))
    n = len(prompt)
    lp = np.array([logp[n - 1 + i, tok] for i, tok in enumerate(comp.token_ids)])
    return lp, np.asarray(routed[0, :len(seq) - 1])


def test_protocol_and_buckets():
    assert pow2_buckets(16, 100) == (16, 32, 64, 128)
    assert [quarter_octave(n) for n in (1, 7, 9, 17, 65, 81)] == [1, 7, 10, 20, 80, 96]
    with pytest.raises(ValueError, match="must be positive"):
        quarter_octave(0)
    assert pick(17, (16, 32), "prompt length") == 32
    with pytest.raises(ValueError, match="prompt length 40 exceeds the largest bucket 32"):
        pick(40, (16, 32), "prompt length")
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    assert SamplingParams(temperature=0.5, seed=3).to_sglang() == {
        "temperature": 0.5, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "max_new_tokens": 128,
        "stop_token_ids": [], "ignore_eos": False, "sampling_seed": 3}


def test_logprobs_and_experts_match_teacher_forcing_left_padded(engine, model):
    """A left-padded batch of different prompt lengths, greedy and sampled rows mixed."""
    assert isinstance(engine, RolloutEngine)
    temps = [0.0, 0.7, 1.3, 0.0]
    reqs = [GenerateRequest(p, SamplingParams(temperature=t, max_new_tokens=10 + i, seed=i), return_routed_experts=True)
            for i, (p, t) in enumerate(zip(PROMPTS, temps))]
    out = engine.generate(reqs)
    for prompt, t, req, [comp] in zip(PROMPTS, temps, reqs, out):
        assert comp.finish_reason in ("length", "stop") and comp.prompt_tokens == len(prompt)
        if comp.finish_reason == "length":
            assert len(comp.token_ids) == req.sampling.max_new_tokens
        lp, experts = teacher_forced(model, prompt, comp, t)
        np.testing.assert_allclose(comp.logprobs, lp, atol=1e-4)
        assert comp.routed_experts.shape == (len(prompt) + len(comp.token_ids) - 1, 2, 2)
        np.testing.assert_array_equal(comp.routed_experts, experts)
        assert comp.weight_version == engine.weight_version


def test_greedy_equals_transformers_generate(engine, tiny):
    hf_model = tiny[1][0]
    out = engine.generate([GenerateRequest(p, greedy(12)) for p in PROMPTS])
    for prompt, [comp] in zip(PROMPTS, out):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=12, do_sample=False)
        ref_ids = ref[0, len(prompt):].tolist()
        if 2 in ref_ids:  # transformers pads after EOS (id 2); we stop there too
            ref_ids = ref_ids[:ref_ids.index(2) + 1]
        assert comp.token_ids == ref_ids


def test_stop_tokens_and_eos(engine):
    [[base]] = engine.generate([GenerateRequest(PROMPTS[0], greedy(12), return_logprob=False)])
    assert base.logprobs is None
    stop_at = next((i for i in range(1, 12) if base.token_ids[i] not in base.token_ids[:i]), 0)
    stop = base.token_ids[stop_at]
    [[cut]] = engine.generate([GenerateRequest(PROMPTS[0], greedy(12, stop_token_ids=(stop,)))])
    assert cut.token_ids == base.token_ids[:stop_at + 1]
    assert (cut.finish_reason, cut.matched_stop) == ("stop", stop)
    # The config's EOS stops too unless ignore_eos; our engine treats it as a stop token.
    eos_engine_out = JaxEngine(engine_model_like(engine), buckets=BUCKETS, eos_token_ids=[stop]).generate(
        [GenerateRequest(PROMPTS[0], greedy(12)), GenerateRequest(PROMPTS[0], greedy(12, ignore_eos=True))])
    assert eos_engine_out[0][0].token_ids == cut.token_ids
    assert eos_engine_out[1][0].token_ids == base.token_ids


def engine_model_like(engine: JaxEngine):
    return nnx.merge(engine.graphdef, engine.state)


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    sp = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, max_new_tokens=12, seed=1234)
    a = engine.generate([GenerateRequest(PROMPTS[1], sp, n=3)])[0]
    b = engine.generate([GenerateRequest(PROMPTS[0], greedy()), GenerateRequest(PROMPTS[1], sp, n=3)])[1]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) == 3  # the n samples differ from each other
    other = engine.generate([GenerateRequest(PROMPTS[1], SamplingParams(**{**sp.__dict__, "seed": 99}), n=3)])[0]
    assert [c.token_ids for c in other] != [c.token_ids for c in a]


def test_more_rows_than_the_largest_batch_run_in_chunks(engine):
    reqs = [GenerateRequest(p, greedy(6)) for p in PROMPTS] + [GenerateRequest(PROMPTS[2], greedy(6), n=3)]
    out = engine.generate(reqs)
    single = engine.generate([GenerateRequest(PROMPTS[2], greedy(6))])[0][0]
    assert [len(o) for o in out] == [1, 1, 1, 1, 3]
    assert all(c.token_ids == single.token_ids for c in out[4])
    assert out[2][0].token_ids == single.token_ids


def test_bad_requests_are_refused_with_the_reason(engine):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([GenerateRequest([1, 600], greedy())])
    with pytest.raises(ValueError, match="prompt length 20 exceeds"):
        engine.generate([GenerateRequest(list(range(20)), greedy())])
    with pytest.raises(ValueError, match="max_new_tokens 40 exceeds"):
        engine.generate([GenerateRequest([1, 2], greedy(40))])


def test_weight_update_in_place_without_recompiling(engine, tiny, model):
    reqs = [GenerateRequest(p, greedy(10)) for p in PROMPTS]
    before = engine.generate(reqs)
    compiles = engine.compile_count
    try:
        version = engine.update_weights_from_disk(tiny[0][1], weight_version="step-1")
        assert version == engine.weight_version == "step-1"
        after = engine.generate(reqs)
        reference = JaxEngine.from_hf(tiny[0][1], buckets=BUCKETS).generate(reqs)
        assert [c.token_ids for [c] in after] == [c.token_ids for [c] in reference]
        assert [c.token_ids for [c] in after] != [c.token_ids for [c] in before]
        assert after[0][0].weight_version == "step-1"
        # back to the first weights from a param tree (a bf16 copy is cast to the served fp32)
        engine.update_weights(jax.tree.map(lambda x: x.astype("bfloat16"), engine_state_of(model)))
        assert engine.weight_version == "2"
        engine.update_weights(model)
        assert [c.token_ids for [c] in engine.generate(reqs)] == [c.token_ids for [c] in before]
        assert engine.compile_count == compiles
    finally:
        engine.update_weights(model, weight_version="default")
    with pytest.raises(EngineError, match="mis-shaped"):
        bad = jax.tree.map(lambda x: x[..., :1] if x.ndim == 1 else x, engine_state_of(model))
        engine.update_weights(bad)


def engine_state_of(model):
    return nnx.split(model)[1]


def test_release_and_resume_memory(engine):
    reqs = [GenerateRequest(PROMPTS[3], greedy(5))]
    before = engine.generate(reqs)[0][0].token_ids
    engine.release_memory_occupation(["weights", "kv_cache"])
    try:
        assert not engine.health()
        with pytest.raises(EngineError, match="released"):
            engine.generate(reqs)
    finally:
        engine.resume_memory_occupation()
    assert engine.health()
    assert engine.generate(reqs)[0][0].token_ids == before
