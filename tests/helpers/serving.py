"""A tiny random checkpoint that carries the real Qwen3 tokenizer, and `ace-jax serve` run on it."""

from __future__ import annotations

import json
import os
import pathlib
import sys

from ace_jax.models import get_config
from ace_jax.tokenizer import ENDOFTEXT_ID, IM_END_ID, load_qwen3_tokenizer
from rollout.sglang_launcher import LaunchConfig, ServerProcess
from tests.helpers.hf_models import random_hf_model

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
QWEN3_VOCAB = 151936  # the real checkpoints' embedding rows (the tokenizer has 151,669 tokens)
SERVE_ENV = (("JAX_PLATFORMS", "cpu"), ("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache")),
             ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5"), ("JAX_DEFAULT_MATMUL_PRECISION", "highest"),
             ("PYTHONPATH", str(ROOT)))


def tiny_qwen3_checkpoint(path: str | os.PathLike, seed: int = 0, max_position_embeddings: int = 4096) -> str:
    """A tiny dense Qwen3 with Qwen3's vocabulary, stop tokens, tokenizer and chat template."""
    cfg = get_config("tiny-dense", vocab_size=QWEN3_VOCAB, eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID,
                     bos_token_id=None, max_position_embeddings=max_position_embeddings)
    random_hf_model(cfg, seed=seed).save_pretrained(path)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID}, f)
    load_qwen3_tokenizer().save_pretrained(path)
    return str(path)


def serve_process(model_path: str, *flags: str, name: str = "tiny-qwen3") -> ServerProcess:
    """`ace-jax serve` on `model_path` as a child process (started by the caller), named `name`."""
    command = (sys.executable, "-m", "ace_jax.cli", "serve", "--hf", "{model_path}", "--host", "{host}",
               "--port", "{port}", "--weight-version", "{weight_version}", "--served-model-name", name, *flags)
    return ServerProcess(LaunchConfig(model_path=model_path, command=command, env=SERVE_ENV,
                                      startup_timeout_s=300))
