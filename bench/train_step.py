"""One GRPO update (fwd + bwd + AdamW) on CPU: ace-jax's jit step vs the same model and loss in
PyTorch on transformers' Qwen3MoeForCausalLM (same weights, batch, dtype fp32).

Prints tokens per second for a tiny and a small MoE; the last line is
`ratio grpo_step <ours/theirs time>` for the small MoE (below 1 means ace-jax is faster).
Run: .venv/bin/python bench/train_step.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ace_jax  # noqa: F401  (platform selection before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from ace_jax.checkpoint import hf
from ace_jax.grpo import LossConfig
from ace_jax.models import get_config
from ace_jax.train import OptimizerConfig, create_train_state, make_optimizer, make_train_step
from ace_jax.train.batch import TrainBatch

CASES = {"tiny-moe": dict(batch=16, length=128), "small-moe": dict(batch=8, length=256)}


def _time(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _batch(vocab: int, b: int, t: int, seed: int = 0) -> TrainBatch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t), dtype=np.int32)
    attn = np.ones((b, t), np.int32)
    loss = np.zeros((b, t), np.int32)
    loss[:, t // 4:] = 1  # a quarter prompt, the rest completion
    adv = rng.standard_normal(b).astype(np.float32)
    lps = np.where(loss > 0, -rng.random((b, t)).astype(np.float32) * 3, 0.0).astype(np.float32)
    return TrainBatch(ids, attn, loss, adv, lps)


def torch_step_fn(model, batch: TrainBatch, eps_low=0.2, eps_high=0.28, tis_cap=2.0):
    """PPO clip-higher, token-mean, truncated IS; one AdamW step (as our step, in PyTorch)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    ids = torch.as_tensor(batch.input_ids, dtype=torch.long)
    attn = torch.as_tensor(batch.attention_mask)
    mask = torch.as_tensor(batch.loss_mask[:, 1:], dtype=torch.float32)
    adv = torch.as_tensor(batch.advantages)[:, None]
    rollout = torch.as_tensor(batch.rollout_logprobs[:, 1:])

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        old = logp.detach()
        ratio = torch.exp(logp - old)
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high))
        weight = torch.exp(old - rollout).clamp(max=tis_cap)
        loss = (pg * weight * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, shape in CASES.items():
        cfg = get_config(name)
        torch.manual_seed(0)
        hf_cfg_cls = transformers.Qwen3MoeConfig
        data = {k: v for k, v in cfg.to_hf("float32").items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
        torch_model = transformers.Qwen3MoeForCausalLM(hf_cfg_cls(**data)).float().train()
        with tempfile.TemporaryDirectory() as d:
            torch_model.save_pretrained(d)
            model = hf.load(d, dtype="float32")
        batch = _batch(cfg.vocab_size, shape["batch"], shape["length"])
        tokens = int(batch.loss_mask.sum())
        optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0))
        graphdef, state = create_train_state(model, optimizer)
        step = make_train_step(graphdef, optimizer, LossConfig(), donate=False)
        jbatch = jax.tree.map(jnp.asarray, batch)
        ours = _time(lambda: jax.block_until_ready(step(state, jbatch)), args.repeats)
        theirs = _time(torch_step_fn(torch_model, batch), args.repeats)
        rows.append((name, shape["batch"], shape["length"], tokens, ours, theirs))
    print(f"GRPO update step (fwd+bwd+AdamW), CPU fp32; jax {jax.__version__} (moe_backend auto), "
          f"torch {torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'model':<12}{'batch':>6}{'len':>6}{'loss tok':>10}{'ours ms':>10}{'torch ms':>10}"
          f"{'ours tok/s':>12}{'torch tok/s':>12}")
    for name, b, t, tok, ours, theirs in rows:
        print(f"{name:<12}{b:>6}{t:>6}{tok:>10}{ours * 1e3:>10.1f}{theirs * 1e3:>10.1f}"
              f"{tok / ours:>12.0f}{tok / theirs:>12.0f}")
    print(f"ratio grpo_step {rows[-1][4] / rows[-1][5]:.3f}")


if __name__ == "__main__":
    main()
