"""Mixed precision agrees across trainer, engine and transformers (fp32 params, bf16 compute)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from ace_jax.checkpoint import hf
from ace_jax.inference.engine import JaxEngine
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.models.moe import route
from ace_jax.train.batch import make_batch
from ace_jax.train.step import sequence_logprobs
from helpers.hf_models import random_hf_model
from rollout.engine import GenerateRequest, SamplingParams

CFG = get_config("tiny-moe")


def _router_probs_ours(x: np.ndarray, weight: np.ndarray, gate_dtype: str) -> np.ndarray:
    xb = jnp.asarray(x, jnp.bfloat16)
    return np.asarray(route(xb, jnp.asarray(weight.T), CFG.num_experts_per_tok, True, gate_dtype=gate_dtype).probs)


def test_router_gate_runs_in_the_hidden_dtype_like_transformers():
    torch_model = random_hf_model(CFG, seed=3)
    gate = next(m for m in torch_model.modules() if type(m).__name__ == "Qwen3MoeTopKRouter")
    weight = gate.weight.detach().float().numpy()
    x = np.random.RandomState(0).randn(64, CFG.hidden_size).astype(np.float32)
    gate_bf16 = gate.to(torch.bfloat16)
    with torch.no_grad():
        logits, _, theirs_ids = gate_bf16(torch.as_tensor(x).to(torch.bfloat16))
    theirs = torch.softmax(logits, dtype=torch.float, dim=-1).numpy()
    compute = _router_probs_ours(x, weight, "compute")   # the default: the engine's and SGLang's rule
    fp32 = _router_probs_ours(x, weight, "float32")
    assert np.abs(compute - theirs).max() <= 1e-6
    assert np.abs(fp32 - theirs).max() > 1e-4            # the old fp32 gate does not match


def test_bf16_logits_match_transformers(tmp_path):
    torch_model = random_hf_model(CFG, seed=5)
    torch_model.save_pretrained(tmp_path)
    ids = np.random.RandomState(1).randint(3, CFG.vocab_size, size=(2, 12))
    with torch.no_grad():
        theirs = torch_model.to(torch.bfloat16)(input_ids=torch.as_tensor(ids)).logits.float().numpy()
    ours = np.asarray(hf.load(tmp_path, dtype="bfloat16")(jnp.asarray(ids, jnp.int32)))
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 0.03 * scale
    assert np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1)) >= 0.9


def test_trainer_lm_head_runs_in_the_compute_dtype_like_forward():
    """sequence_logprobs (the trainer) equals log_softmax of forward()'s logits (the engine's)."""
    cfg = CFG.replace(param_dtype="float32", compute_dtype="bfloat16")
    model = Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.RandomState(2).randint(3, cfg.vocab_size, size=(2, 16)), jnp.int32)
    mask = jnp.ones_like(ids)
    graphdef, params = nnx.split(model)
    trainer = np.asarray(sequence_logprobs(graphdef, params, ids, mask))[:, 1:]
    logits = model.forward(ids, mask).logits.astype(jnp.float32)
    engine = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits, -1)[:, :-1], ids[:, 1:, None], -1)[..., 0])
    assert np.abs(trainer - engine).max() <= 1e-4


def test_trainer_logprobs_match_the_engine_in_bf16():
    cfg = CFG.replace(param_dtype="float32", compute_dtype="bfloat16")
    model = Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))
    engine = JaxEngine(model, seed=0)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, cfg.vocab_size, 12)) for _ in range(2)]
    outs = engine.generate([GenerateRequest(p, SamplingParams(temperature=1.0, max_new_tokens=16, seed=i,
                                                              ignore_eos=True), n=2, return_logprob=True)
                            for i, p in enumerate(prompts)])
    rows = [(p, c) for p, samples in zip(prompts, outs) for c in samples]
    batch = make_batch([p for p, _ in rows], [list(c.token_ids) for _, c in rows], np.zeros(len(rows)),
                       [list(c.logprobs) for _, c in rows], pad_id=0, buckets=(32,))
    graphdef, params = nnx.split(model)
    trainer = sequence_logprobs(graphdef, params, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask))
    mask = np.asarray(batch.loss_mask).astype(bool)
    gap = np.abs(np.asarray(trainer) - np.asarray(batch.rollout_logprobs))[mask]
    assert gap.max() < 1e-2, gap.max()   # bf16 rounding of KV-cache decode vs full forward
