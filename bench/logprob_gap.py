"""Engine-vs-trainer logprob gap: the embedded engine's per-token logprobs against the trainer's
recomputation (`sequence_logprobs`) on the same tokens, fp32 params with bf16 compute, against
the same model in fp32 compute (the peer). Prints a table and a last `ratio` line.

    python bench/logprob_gap.py [--preset tiny-moe] [--prompts 4] [--new-tokens 32]
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ace_jax.inference.engine import JaxEngine
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train.batch import make_batch
from ace_jax.train.step import sequence_logprobs
from rollout.engine import GenerateRequest, SamplingParams


def gap(preset: str, compute_dtype: str, prompts: int, new_tokens: int) -> tuple[float, float, int]:
    cfg = get_config(preset, param_dtype="float32", compute_dtype=compute_dtype)
    model = Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(3, cfg.vocab_size, 24)) for _ in range(prompts)]
    requests = [GenerateRequest(p, SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=i, ignore_eos=True),
                                n=2, return_logprob=True) for i, p in enumerate(ids)]
    rows = [(p, c) for p, samples in zip(ids, JaxEngine(model, seed=0).generate(requests)) for c in samples]
    batch = make_batch([p for p, _ in rows], [list(c.token_ids) for _, c in rows], np.zeros(len(rows)),
                       [list(c.logprobs) for _, c in rows], pad_id=0, buckets=(24 + new_tokens,))
    graphdef, params = nnx.split(model)
    trainer = sequence_logprobs(graphdef, params, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask))
    mask = np.asarray(batch.loss_mask).astype(bool)
    d = np.abs(np.asarray(trainer) - np.asarray(batch.rollout_logprobs))[mask]
    return float(d.max()), float(d.mean()), int(mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-moe")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    results = {dt: gap(args.preset, dt, args.prompts, args.new_tokens) for dt in ("bfloat16", "float32")}
    print(f"| {args.preset} compute | max abs gap | mean abs gap | tokens |\n|---|---|---|---|")
    for dt, (mx, mean, n) in results.items():
        print(f"| {dt} | {mx:.3g} | {mean:.3g} | {n} |")
    print(f"ratio logprob_gap_max_bf16_vs_fp32 {results['bfloat16'][0] / max(results['float32'][0], 1e-12):.1f}")


if __name__ == "__main__":
    main()
