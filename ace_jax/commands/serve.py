"""`ace-jax serve --hf DIR [--port P]`: the embedded JAX engine over SGLang's HTTP API and OpenAI's
/v1/models, /v1/chat/completions and /v1/completions."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="parameter and compute dtype")
    parser.add_argument("--max-batch-size", type=int, default=32, help="largest batch bucket (samples)")
    parser.add_argument("--max-prompt-len", type=int, default=2048, help="largest prompt-length bucket")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="largest generation-length bucket")
    parser.add_argument("--batch-buckets", default=None, help="explicit batch sizes, e.g. '8,32' (overrides --max-batch-size)")
    parser.add_argument("--prompt-buckets", default=None, help="explicit prompt lengths, e.g. '256,1024'")
    parser.add_argument("--generate-buckets", default=None, help="explicit generation lengths, e.g. '512,2048'")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="requests arriving within this window run as one batch")
    parser.add_argument("--weight-version", default="default", help="initial weight version")
    parser.add_argument("--sampling-defaults", default="model", choices=["model", "openai"],
                        help="defaults for sampling fields a request omits (as SGLang's flag)")
    parser.add_argument("--moe-backend", default=None, help="MoE backend for the prefill (default: the model's)")
    parser.add_argument("--decode-moe-backend", default=None, help="MoE backend for decode steps (default: measured per model shape on CPU, see inference/moe_choice.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed for requests without sampling_seed")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id of the OpenAI routes (default: the --hf path, as SGLang)")
    parser.add_argument("--log-requests", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ace_jax.inference import Buckets, JaxEngine
    from ace_jax.inference.server import load_tokenizer, log, make_server, sampling_defaults

    log(f"loading {args.hf}")
    buckets = Buckets.powers_of_two(args.max_batch_size, args.max_prompt_len, args.max_new_tokens)
    explicit = {"batch": args.batch_buckets, "prompt": args.prompt_buckets, "generate": args.generate_buckets}
    buckets = dataclasses.replace(buckets, **{k: parse_sizes(v, f"--{k}-buckets") for k, v in explicit.items() if v})
    engine = JaxEngine.from_hf(args.hf, dtype=args.dtype, buckets=buckets, weight_version=args.weight_version,
                               seed=args.seed, moe_backend=args.moe_backend,
                               decode_moe_backend=args.decode_moe_backend)
    tokenizer = load_tokenizer(args.hf)
    server = make_server(engine, args.host, args.port, tokenizer=tokenizer,
                         defaults=sampling_defaults(args.hf, args.sampling_defaults),
                         batch_wait_s=args.batch_wait_ms / 1000, quiet=not args.log_requests,
                         model_name=args.served_model_name or args.hf)
    host, port = server.server_address[:2]
    log(f"listening on http://{host}:{port} (tokenizer: {'yes' if tokenizer is not None else 'no'})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.state.batcher.close()
    return 0


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """'8,32' -> (8, 32), sorted; a clear error naming the flag otherwise."""
    try:
        sizes = tuple(sorted(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"{flag} must list positive integers, got {text!r}")
    return sizes
