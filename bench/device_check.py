"""GPU check (one H200 / H100): the MoE layer forward + backward of each backend at the 30B layer
shape, in TFLOP/s against the chip's peak, and one small-MoE GRPO train step.

The `gmm` backend is measured once per grouped-matmul impl (`--gmm-impls`: tokamax's Mosaic GPU
and Triton kernels, XLA's ragged_dot), rows `gmm[impl]`; a tokamax kernel that cannot run falls
back to tokamax's XLA path, so a row equal to `gmm[xla]` means the kernel did not run.

Shape: 16 local experts (Qwen3-30B-A3B: 128 experts over 8-way expert parallelism), hidden 2048,
expert width 768, 16384 routed rows (16k tokens, top-1 within the local experts), bf16. Useful
FLOPs: 3 matmuls x 2 x rows x hidden x width, x3 for forward + backward. Writes a markdown table
(--out) and prints it; the last line is `ratio moe_gmm_vs_best_other <best gmm ms / best other ms>`.
Run: PYTHONPATH=. python bench/device_check.py [--out device_check.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from ace_jax.models.constraints import use
from ace_jax.models.moe import BACKENDS, moe_block
from sharding.roofline import CHIPS


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def chip_peak() -> tuple[str, float]:
    kind = jax.devices()[0].device_kind.lower()
    key = next((k for k in ("h200", "h100", "v6e", "v5p") if k in kind.replace(" ", "")), None)
    return kind, CHIPS[key].peak_flops if key else float("nan")


def moe_rows(tokens: int, hidden: int, width: int, experts: int, repeats: int, backends) -> list[tuple]:
    rng = np.random.default_rng(0)
    bf = jnp.bfloat16
    x = jnp.asarray(rng.standard_normal((tokens, hidden)), bf)
    router = jnp.asarray(rng.standard_normal((hidden, experts)) * 0.1, jnp.float32)
    gate, up = (jnp.asarray(rng.standard_normal((experts, hidden, width)) * 0.02, bf) for _ in range(2))
    down = jnp.asarray(rng.standard_normal((experts, width, hidden)) * 0.02, bf)
    cot = jnp.asarray(rng.standard_normal((tokens, hidden)), bf)
    useful = 3 * 3 * 2.0 * tokens * hidden * width
    rows = []
    for name, backend, impl in backends:
        def loss(x, gate, up, down, backend=backend):
            y, _, _ = moe_block(x, router, gate, up, down, top_k=1, norm_topk_prob=True, backend=backend)
            return jnp.sum((y * cot).astype(jnp.float32))

        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        try:
            with use(types.SimpleNamespace(gmm_impl=impl) if impl else None):   # traced on the first call
                sec = _time(lambda: step(x, gate, up, down), repeats)
            rows.append((name, sec * 1e3, useful / sec / 1e12))
        except Exception as exc:  # a backend that does not compile or fit is reported, not fatal
            rows.append((name, float("nan"), float("nan")))
            print(f"{name}: failed: {str(exc).splitlines()[0][:200]}", flush=True)
    return rows


def backend_runs(backends: list[str], gmm_impls: list[str]) -> list[tuple[str, str, str | None]]:
    """(row name, moe backend, gmm impl) per measurement: `gmm` once per impl."""
    out = []
    for backend in backends:
        if backend == "gmm":
            out += [(f"gmm[{impl}]", "gmm", impl) for impl in gmm_impls]
        else:
            out.append((backend, backend, None))
    return out


def train_step_row(repeats: int, b: int, t: int) -> tuple:
    from flax import nnx

    from ace_jax.grpo import LossConfig
    from ace_jax.models import Qwen3ForCausalLM, get_config
    from ace_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step
    from ace_jax.train.batch import TrainBatch

    cfg = get_config("small-moe", param_dtype="float32", compute_dtype="bfloat16")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, size=(b, t), dtype=np.int32)
    loss_mask = np.zeros((b, t), np.int32)
    loss_mask[:, t // 4:] = 1
    batch = TrainBatch(ids, np.ones((b, t), np.int32), loss_mask, rng.standard_normal(b).astype(np.float32),
                       np.where(loss_mask > 0, -1.0, 0.0).astype(np.float32))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0))
    graphdef, state = create_train_state(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)), optimizer)
    step = make_train_step(graphdef, optimizer, LossConfig(), donate=False)
    jbatch = jax.tree.map(jnp.asarray, batch)
    sec = _time(lambda: step(state, jbatch), repeats)
    return (f"small-moe GRPO step (batch {b} x {t}, bf16 compute, moe {cfg.moe_backend})", sec * 1e3, b * t / sec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=sorted(BACKENDS))
    parser.add_argument("--gmm-impls", nargs="+", default=["tokamax-mosaic", "tokamax-triton", "xla"])
    parser.add_argument("--step-batch", type=int, default=16)
    parser.add_argument("--step-len", type=int, default=1024)
    parser.add_argument("--out", default="device_check.md")
    args = parser.parse_args()
    kind, peak = chip_peak()
    lines = [f"device {kind} ({jax.devices()[0].platform}), jax {jax.__version__}; peak bf16 {peak / 1e12:.0f} TFLOP/s",
             f"MoE layer fwd+bwd: {args.tokens} rows x hidden {args.hidden} x width {args.width}, "
             f"{args.experts} local experts, bf16", "",
             "| backend | ms | TFLOP/s (useful) | % of peak |", "|---|---|---|---|"]
    rows = moe_rows(args.tokens, args.hidden, args.width, args.experts, args.repeats,
                    backend_runs(args.backends, args.gmm_impls))
    for name, ms, tflops in rows:
        lines.append(f"| {name} | {ms:.2f} | {tflops:.1f} | {100 * tflops * 1e12 / peak:.1f} |")
    print("\n".join(lines), flush=True)
    step = train_step_row(max(2, args.repeats // 2), args.step_batch, args.step_len)
    lines += ["", "| train step | ms | tokens/s |", "|---|---|---|", f"| {step[0]} | {step[1]:.1f} | {step[2]:.0f} |"]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))
    timed = {name: ms for name, ms, _ in rows if ms == ms}
    gmm = [ms for name, ms in timed.items() if name.startswith("gmm[")]
    others = [ms for name, ms in timed.items() if not name.startswith("gmm[")]
    if gmm and others:
        print(f"ratio moe_gmm_vs_best_other {min(gmm) / min(others):.3f}")


if __name__ == "__main__":
    main()
