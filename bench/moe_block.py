"""MoE block forward+backward on CPU: our backends vs transformers' Qwen3MoeSparseMoeBlock.

Same weights and inputs (hidden 512, 32 experts, top 4, expert width 256, 2048 tokens by
default). Prints a table; the last line is `ratio moe_block_fwd_bwd <ours/theirs>` with ours the
fastest of our backends and theirs transformers' fastest experts implementation on CPU.
Run: .venv/bin/python bench/moe_block.py [--tokens 2048] [--repeats 5] [--backends blocked gmm ..]
"""

from __future__ import annotations

import argparse
import statistics
import time

import ace_jax  # noqa: F401  (platform selection before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from ace_jax.models.moe import BACKENDS, moe_block


def _time(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    args = parser.parse_args()
    n, h, e, k, i = args.tokens, args.hidden, args.experts, args.top_k, args.width
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h), np.float32)
    router = rng.standard_normal((h, e), np.float32) * 0.5
    gate, up = (rng.standard_normal((e, h, i), np.float32) * 0.05 for _ in range(2))
    down = rng.standard_normal((e, i, h), np.float32) * 0.05
    cot = rng.standard_normal((n, h), np.float32)

    rows = []
    for backend in args.backends:
        if backend == "dense" and n * e * max(h, i) > 2**28:
            continue

        def loss(x, router, gate, up, down, backend=backend):
            y, _, _ = moe_block(x, router, gate, up, down, top_k=k, norm_topk_prob=True, backend=backend)
            return jnp.sum(y * cot)

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
        args_j = [jnp.asarray(a) for a in (x, router, gate, up, down)]
        rows.append((f"ace-jax {backend}", _time(lambda: jax.block_until_ready(step(*args_j)), args.repeats)))

    cfg = transformers.Qwen3MoeConfig(hidden_size=h, num_experts=e, num_experts_per_tok=k,
                                      moe_intermediate_size=i, norm_topk_prob=True)
    theirs = {}
    for impl in ("grouped_mm", "eager"):
        cfg._experts_implementation = impl
        block = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock(cfg).float()
        with torch.no_grad():
            block.gate.weight.copy_(torch.from_numpy(router.T.copy()))
            block.experts.gate_up_proj.copy_(torch.from_numpy(
                np.concatenate([gate.transpose(0, 2, 1), up.transpose(0, 2, 1)], axis=1).copy()))
            block.experts.down_proj.copy_(torch.from_numpy(down.transpose(0, 2, 1).copy()))
        xt = torch.from_numpy(x).reshape(1, n, h)
        ct = torch.from_numpy(cot).reshape(1, n, h)

        def run():
            xg = xt.clone().requires_grad_(True)
            block.zero_grad(set_to_none=True)
            (block(xg) * ct).sum().backward()

        theirs[impl] = _time(run, args.repeats)
        rows.append((f"transformers {impl}", theirs[impl]))

    print(f"MoE block fwd+bwd, CPU, fp32: tokens={n} hidden={h} experts={e} top_k={k} width={i}; "
          f"jax {jax.__version__}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"{'implementation':<26}{'ms':>10}")
    for name, ms in rows:
        print(f"{name:<26}{ms:>10.1f}")
    ours = min(ms for name, ms in rows if name.startswith("ace-jax"))
    print(f"ratio moe_block_fwd_bwd {ours / min(theirs.values()):.3f}")


if __name__ == "__main__":
    main()
