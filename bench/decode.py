"""Embedded JAX engine vs transformers `generate` (torch CPU): greedy decode tokens per second.

Same random weights (a transformers model saved to disk and loaded with `hf.load`), same batch,
prompt and output lengths, no early stop (EOS ignored on both sides). Each side is warmed up
once (compilation excluded), then timed over `--repeats` runs; the best run counts.

    .venv/bin/python bench/decode.py [--batch 8 --prompt 32 --new 32 --repeats 1]

Last line: `ratio decode_tokens_per_s <ours/theirs>` for small-moe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from ace_jax.inference import Buckets, JaxEngine  # noqa: E402
from ace_jax.models import get_config  # noqa: E402
from rollout.engine import GenerateRequest, SamplingParams  # noqa: E402
from tests.helpers.hf_models import random_hf_model  # noqa: E402


def best_time(fn, repeats: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_one(name: str, batch: int, prompt: int, new: int, repeats: int, moe_backend: str | None,
              decode_moe_backend: str | None) -> dict:
    cfg = get_config(name)
    hf_model = random_hf_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, (batch, prompt))
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        engine = JaxEngine.from_hf(tmp, buckets=Buckets.powers_of_two(batch, prompt, new), moe_backend=moe_backend,
                                   decode_moe_backend=decode_moe_backend)
    sp = SamplingParams(temperature=0.0, max_new_tokens=new, ignore_eos=True)
    requests = [GenerateRequest(p.tolist(), sp, return_logprob=False) for p in prompts]
    start = time.perf_counter()
    engine.generate(requests)
    compile_s = time.perf_counter() - start
    ours_s, ours = best_time(lambda: engine.generate(requests), repeats)

    ids = torch.as_tensor(prompts, dtype=torch.long)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                  do_sample=False, pad_token_id=0)

    def theirs_run():
        with torch.no_grad():
            return hf_model.generate(ids, **kwargs)

    theirs_run()
    theirs_s, theirs = best_time(theirs_run, repeats)
    ours_ids = np.array([c.token_ids for [c] in ours])
    agree = float(np.mean(ours_ids == theirs[:, prompt:].numpy()))
    tokens = batch * new
    return dict(model=name, batch=batch, prompt=prompt, new=new, compile_s=compile_s, ours_s=ours_s,
                theirs_s=theirs_s, ours_tps=tokens / ours_s, theirs_tps=tokens / theirs_s, agree=agree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--moe-backend", default=None, help="the engine's prefill MoE backend (default: the model's)")
    parser.add_argument("--decode-moe-backend", default=None, help="the engine's decode MoE backend (default: dense on CPU)")
    parser.add_argument("--models", default="tiny-moe,small-moe")
    args = parser.parse_args()
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    header = f"{'model':<10} {'batch':>5} {'prompt':>6} {'new':>4} {'compile_s':>9} {'ours_s':>7} {'hf_s':>7} " \
             f"{'ours_tok/s':>10} {'hf_tok/s':>9} {'ratio':>6} {'greedy_agree':>12}"
    print(header)
    rows = []
    for name in args.models.split(","):
        r = bench_one(name, args.batch, args.prompt, args.new, args.repeats, args.moe_backend, args.decode_moe_backend)
        rows.append(r)
        print(f"{r['model']:<10} {r['batch']:>5} {r['prompt']:>6} {r['new']:>4} {r['compile_s']:>9.1f} "
              f"{r['ours_s']:>7.2f} {r['theirs_s']:>7.2f} {r['ours_tps']:>10.1f} {r['theirs_tps']:>9.1f} "
              f"{r['ours_tps'] / r['theirs_tps']:>6.2f} {r['agree']:>12.3f}", flush=True)
    last = rows[-1]
    print(f"ratio decode_tokens_per_s {last['ours_tps'] / last['theirs_tps']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
