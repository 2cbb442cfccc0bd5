"""Same-process A/B of one continuous-engine decode chunk (8 steps): per-row block-table reads vs
shared-prefix reads (a group's prompt blocks read once for its rows), runs interleaved; the
shared chunk with the layers unrolled on per-layer weights and KV buffers (`unroll_layers`);
and the chunk with a one-block table (what remains of a step without attention). Rows feed
distinct tokens (so the MoE routes them apart, as real rows).

    .venv/bin/python bench/decode_ab.py MODEL ROWS GROUPS PROMPT_BLOCKS PRIVATE_BLOCKS [MOE_BACKEND]

`bench/decode_ab.py small-moe 24 3 64 17` is the code shape's layout (1024-token prompts, 3
groups of 8 rows in a 1/4 pool, up to 256 new tokens). Last line: `ratio decode_step <per-row/shared>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ace_jax.inference import paged_steps  # noqa: E402
from ace_jax.models import Qwen3ForCausalLM, get_config  # noqa: E402

BLOCK, STEPS = 16, 8


def row_inputs(rows: int, position: int, vocab: int) -> dict[str, np.ndarray]:
    """Sampled rows (T = 1, no filters) at one position with distinct tokens, none finished."""
    z = np.zeros(rows, np.int32)
    return dict(tok=(5 + 7 * np.arange(rows, dtype=np.int32)) % vocab, pos=z + position, gen=z, done=np.zeros(rows, bool), max_new=z + 1000,
                stop=np.full((rows, 16), -1, np.int32), temp=np.ones(rows, np.float32), top_k=z - 1,
                top_p=np.ones(rows, np.float32), min_p=np.zeros(rows, np.float32), seeds=z.astype(np.uint32))


def median_ms(fn, repeats: int = 3) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2] * 1e3 / STEPS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("model", "rows", "groups", "prompt_blocks", "private_blocks"):
        parser.add_argument(name, type=str if name == "model" else int)
    parser.add_argument("moe_backend", nargs="?", default="blocked")
    a = parser.parse_args()
    if a.rows % a.groups:
        raise SystemExit(f"rows ({a.rows}) must be a multiple of groups ({a.groups})")
    cfg = get_config(a.model)
    model = Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))
    state = nnx.split(model)[1]
    graphdef = nnx.split(nnx.eval_shape(lambda: Qwen3ForCausalLM(cfg.replace(moe_backend=a.moe_backend),
                                                                 rngs=nnx.Rngs(0))))[0]
    members = a.rows // a.groups
    shared_blocks = a.groups * a.prompt_blocks
    prompt = np.random.default_rng(0).permutation(np.arange(1, 1 + shared_blocks)).reshape(a.groups, -1).astype(np.int32)
    private = (1 + shared_blocks + np.arange(a.rows * a.private_blocks, dtype=np.int32)).reshape(a.rows, -1)
    group = np.arange(a.rows, dtype=np.int32) // members
    shared = (prompt, np.full(a.groups, a.prompt_blocks * BLOCK, np.int32), group,
              np.arange(a.rows, dtype=np.int32) % members, np.arange(a.rows, dtype=np.int32).reshape(a.groups, -1))
    blocks = 1 + shared_blocks + a.rows * a.private_blocks
    pools = {False: model.init_paged_cache(blocks, BLOCK), True: model.init_paged_cache(blocks, BLOCK, per_layer=True)}
    layers = model.layer_params()
    position = a.prompt_blocks * BLOCK + (a.private_blocks - 1) * BLOCK - STEPS

    def chunk(tables, shared=None, position=position, unroll=False):
        pools[unroll], ys = paged_steps.decode_chunk(
            state, pools[unroll], **row_inputs(a.rows, position, cfg.vocab_size), tables=tables, shared=shared,
            layers=layers if unroll else None, graphdef=graphdef, steps=STEPS, routed=False)
        return ys

    variants = {"per-row": lambda: chunk(np.concatenate([prompt[group], private], 1)),
                "shared": lambda: chunk(private, shared),
                "shared, unrolled": lambda: chunk(private, shared, unroll=True),
                "one-block table": lambda: chunk(private[:, :1], position=3)}
    outs = {k: np.asarray(fn()[1]) for k, fn in variants.items()}  # compile; logprobs of the first chunk
    diff = max(np.abs(outs["per-row"] - outs["shared"]).max(), np.abs(outs["shared, unrolled"] - outs["shared"]).max())
    times = {k: [] for k in variants}
    for _ in range(3):  # interleaved, so load drifts hit every variant alike
        for k, fn in variants.items():
            times[k].append(median_ms(fn, 1))
    ms = {k: sorted(v)[1] for k, v in times.items()}
    print(f"{a.model} rows={a.rows} groups={a.groups} prompt_blocks={a.prompt_blocks} private_blocks={a.private_blocks} "
          f"moe={a.moe_backend}; max |logprob per-row or unrolled - shared| {diff:.2e}")
    for k, v in ms.items():
        print(f"{k:<16} {v:8.1f} ms/step")
    print(f"ratio decode_step {ms['per-row'] / ms['shared']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
