"""What the OpenAI routes of `ace-jax serve` cost over SGLang's native `/generate` (same engine, same tokens).

A tiny random checkpoint with the real Qwen3 tokenizer, served in process. The same greedy
completion is asked for, one request at a time, through `/generate` (token ids in and out: the
peer), `/v1/completions` (token ids in, text out), `/v1/chat/completions` (messages through the
chat template, text out) and the same streamed (one server-sent event per token). Median wall
time per request over `--repeats` rounds (the routes take turns) after one warm-up each; the difference is tokenization, chat
templating, incremental detokenization and JSON.

    .venv/bin/python bench/openai_overhead.py [--new 64 --repeats 20]

Last line: `ratio openai_chat_ms_over_generate <chat / generate>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402

from ace_jax.inference import Buckets, JaxEngine  # noqa: E402
from ace_jax.inference.server import load_tokenizer, make_server  # noqa: E402
from tests.helpers.serving import tiny_qwen3_checkpoint  # noqa: E402

MODEL = "tiny-qwen3"
MESSAGES = [{"role": "system", "content": "You are a careful ML engineer."},
            {"role": "user", "content": "Write a scikit-learn baseline for a tabular regression task."}]


def median_ms(routes: dict, repeats: int) -> dict[str, float]:
    """Median ms per route; the routes take turns, so a change in the machine's load hits all alike."""
    for fn in routes.values():
        fn()  # warm-up (compiles)
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeats):
        for name, fn in routes.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_qwen3_checkpoint(tmp)
        engine = JaxEngine.from_hf(path, buckets=Buckets((1,), (64,), (args.new,)))
        tokenizer = load_tokenizer(path)
    server = make_server(engine, "127.0.0.1", 0, tokenizer=tokenizer, model_name=MODEL, batch_wait_s=0.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://{}:{}".format(*server.server_address[:2])
    ids = list(tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False))
    greedy = {"temperature": 0.0, "max_tokens": args.new}
    client = httpx.Client(timeout=600)

    def post(route: str, body: dict) -> httpx.Response:
        r = client.post(url + route, json=body)
        r.raise_for_status()
        return r

    routes = {
        "/generate (ids in, ids out; peer)": lambda: post("/generate", {
            "input_ids": ids, "sampling_params": {"temperature": 0.0, "max_new_tokens": args.new}}),
        "/v1/completions (ids in, text out)": lambda: post("/v1/completions", {
            "model": MODEL, "prompt": ids, **greedy}),
        "/v1/chat/completions": lambda: post("/v1/chat/completions", {
            "model": MODEL, "messages": MESSAGES, **greedy}),
        "/v1/chat/completions stream": lambda: post("/v1/chat/completions", {
            "model": MODEL, "messages": MESSAGES, "stream": True, **greedy}),
    }
    tokens = post("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, **greedy}).json()["usage"]
    results = median_ms(routes, args.repeats)
    server.shutdown()
    peer = results["/generate (ids in, ids out; peer)"]
    print(f"prompt {tokens['prompt_tokens']} tokens, completion {tokens['completion_tokens']} tokens, "
          f"median of {args.repeats}")
    print(f"{'route':40s} {'ms':>9s} {'vs /generate':>13s}")
    for name, ms in results.items():
        print(f"{name:40s} {ms:9.2f} {ms / peer:12.3f}x")
    print(f"ratio openai_chat_ms_over_generate {results['/v1/chat/completions'] / peer:.3f}")


if __name__ == "__main__":
    main()
