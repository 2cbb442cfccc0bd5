"""`ace-jax serve`'s SGLang API, in process: request/response fields, batching, weights, errors."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ace_jax.inference import Buckets, JaxEngine
from ace_jax.inference.api import sampling_from
from ace_jax.inference.server import load_tokenizer, make_server, sampling_defaults
from ace_jax.models import get_config
from rollout.engine import GenerateRequest, SamplingParams
from tests.helpers.hf_models import random_hf_model

BUCKETS = Buckets(batch=(4,), prompt=(16,), generate=(16,))
GREEDY = {"temperature": 0.0, "max_new_tokens": 8}


def save_word_tokenizer(path, vocab_size: int) -> None:
    """A word-level tokenizer: <pad> <s> </s> then words w3..w{V-1}, saved as HF tokenizer files."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    cfg = get_config("tiny-moe")
    plain, other = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("other")
    random_hf_model(cfg, seed=0).save_pretrained(plain)
    random_hf_model(cfg, seed=1).save_pretrained(other)
    with_tok = tmp_path_factory.mktemp("with_tokenizer")
    shutil.copytree(plain, with_tok, dirs_exist_ok=True)
    save_word_tokenizer(with_tok, cfg.vocab_size)
    return str(plain), str(other), str(with_tok)


@pytest.fixture(scope="module")
def engine(dirs):
    return JaxEngine.from_hf(dirs[0], buckets=BUCKETS)


def _serve(engine, **kw):
    server = make_server(engine, "127.0.0.1", 0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="module")
def plain(engine):
    server, url = _serve(engine)
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def texty(engine, dirs):
    server, url = _serve(engine, tokenizer=load_tokenizer(dirs[2]))
    yield url
    server.shutdown()


def post(url, route, body, status=200):
    r = httpx.post(url + route, json=body, timeout=120)
    assert r.status_code == status, r.text
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def test_single_prompt_matches_the_engine(plain, engine):
    prompt = [5, 17, 33, 99]
    out = post(plain, "/generate", {"input_ids": prompt, "sampling_params": GREEDY, "return_logprob": True,
                                    "rid": "abc"})
    [[ref]] = engine.generate([GenerateRequest(prompt, SamplingParams(temperature=0.0, max_new_tokens=8))])
    assert isinstance(out, dict) and "text" not in out
    assert out["output_ids"] == ref.token_ids
    meta = out["meta_info"]
    assert meta["id"] == "abc" and meta["prompt_tokens"] == 4 and meta["completion_tokens"] == 8
    assert meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["weight_version"] == "default"
    assert [e[1] for e in meta["output_token_logprobs"]] == ref.token_ids
    assert all(e[2] is None for e in meta["output_token_logprobs"])
    np.testing.assert_allclose([e[0] for e in meta["output_token_logprobs"]], ref.logprobs, atol=1e-6)


def test_batch_with_n_is_a_flat_prompt_major_list(plain, engine):
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    sp = {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 6, "n": 2, "sampling_seed": 7}
    out = post(plain, "/generate", {"input_ids": prompts, "sampling_params": sp, "return_routed_experts": True})
    assert isinstance(out, list) and len(out) == 4
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=6, seed=7)
    refs = engine.generate([GenerateRequest(p, params, n=2, return_routed_experts=True) for p in prompts])
    flat = [c for comps in refs for c in comps]
    assert [o["output_ids"] for o in out] == [c.token_ids for c in flat]
    assert "output_token_logprobs" not in out[0]["meta_info"]
    for o, c in zip(out, flat):
        experts = np.frombuffer(base64.b64decode(o["meta_info"]["routed_experts"]), "<i4")
        np.testing.assert_array_equal(experts.reshape(c.routed_experts.shape[0], -1),
                                      c.routed_experts.reshape(c.routed_experts.shape[0], -1))


def test_text_in_and_out_with_a_tokenizer(texty, plain, engine):
    by_text = post(texty, "/generate", {"text": "w5 w17 w33", "sampling_params": GREEDY,
                                        "return_logprob": True, "return_text_in_logprobs": True})
    by_ids = post(plain, "/generate", {"input_ids": [5, 17, 33], "sampling_params": GREEDY})
    assert by_text["output_ids"] == by_ids["output_ids"]
    words = {0: "<pad>", 1: "<s>", 2: "</s>"}
    assert by_text["text"] == " ".join(words.get(t, f"w{t}") for t in by_ids["output_ids"] if t > 2)
    assert [e[2] for e in by_text["meta_info"]["output_token_logprobs"]] == [
        words.get(t, f"w{t}") for t in by_ids["output_ids"]]
    err = post(plain, "/generate", {"text": "w5 w6", "sampling_params": GREEDY}, status=400)
    assert "tokenizer" in err["error"]["message"]


def test_sampling_defaults_come_from_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}))
    assert sampling_defaults(str(tmp_path), "model") == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert sampling_defaults(str(tmp_path), "openai") == {}
    sp, n, _ = sampling_from({"top_k": 5, "n": 2}, sampling_defaults(str(tmp_path), "model"))
    assert (sp.temperature, sp.top_p, sp.top_k, n) == (0.6, 0.95, 5, 2)


@pytest.mark.parametrize("body, words", [
    ({"input_ids": [1, 2], "sampling_params": {"frequency_penalty": 0.5}}, "frequency_penalty"),
    ({"input_ids": [1, 2], "sampling_params": {"bogus": 1}}, "bogus"),
    ({"input_ids": [1, 2], "stream": True}, "stream"),
    ({"input_ids": [1, 2], "whatever": 1}, "whatever"),
    ({"input_ids": [1, 2], "text": "x"}, "exactly one"),
    ({"input_ids": [[1, 2], [3]], "sampling_params": [{"n": 1}, {"n": 2}]}, "same for every prompt"),
    ({"input_ids": [1, 999]}, "vocabulary"),
])
def test_bad_requests_get_400_naming_the_field(plain, body, words):
    assert words in post(plain, "/generate", body, status=400)["error"]["message"]


def test_info_health_and_errors(plain):
    assert httpx.get(plain + "/health").status_code == 200
    assert httpx.get(plain + "/health_generate", timeout=60).status_code == 200
    info = httpx.get(plain + "/get_model_info").json()
    assert info["is_generation"] is True and info["weight_version"] == "default" and info["model_path"]
    server = httpx.get(plain + "/get_server_info").json()
    assert "SGLang 0.5.23" in server["version"] and server["internal_states"][0]["compile_count"] >= 1
    assert httpx.post(plain + "/flush_cache").status_code == 200
    assert httpx.get(plain + "/nope").status_code == 404
    r = httpx.post(plain + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_concurrent_requests_run_as_one_batch(engine):
    server, url = _serve(engine, batch_wait_s=0.5)
    try:
        prompts = [[5, 6], [7, 8, 9], [10], [11, 12, 13, 14]]
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda p: post(url, "/generate", {"input_ids": p, "sampling_params": GREEDY}), prompts))
        state = httpx.get(url + "/get_server_info").json()["internal_states"][0]
        assert state["calls"] == 4 and state["batches"] < 4
        refs = engine.generate([GenerateRequest(p, SamplingParams(temperature=0.0, max_new_tokens=8)) for p in prompts])
        assert [o["output_ids"] for o in outs] == [c.token_ids for [c] in refs]
    finally:
        server.shutdown()


def test_update_weights_from_disk_and_memory_saver(plain, engine, dirs):
    body = {"input_ids": [5, 17, 33, 99], "sampling_params": GREEDY}
    before = post(plain, "/generate", body)["output_ids"]
    try:
        answer = post(plain, "/update_weights_from_disk", {"model_path": dirs[1], "weight_version": "v2"})
        assert answer["success"] is True and "v2" in answer["message"]
        assert httpx.get(plain + "/get_weight_version").json() == {"weight_version": "v2"}
        after = post(plain, "/generate", body)
        [[ref]] = JaxEngine.from_hf(dirs[1], buckets=BUCKETS).generate(
            [GenerateRequest([5, 17, 33, 99], SamplingParams(temperature=0.0, max_new_tokens=8))])
        assert after["output_ids"] == ref.token_ids != before
        assert after["meta_info"]["weight_version"] == "v2"
        failed = post(plain, "/update_weights_from_disk", {"model_path": "/no/such/dir"}, status=400)
        assert failed["success"] is False and "/no/such/dir" in failed["message"]
    finally:
        post(plain, "/update_weights_from_disk", {"model_path": dirs[0], "weight_version": "default"})
    assert post(plain, "/generate", body)["output_ids"] == before
    post(plain, "/release_memory_occupation", {"tags": ["weights", "kv_cache"]})
    try:
        assert "released" in post(plain, "/generate", body, status=400)["error"]["message"]
    finally:
        post(plain, "/resume_memory_occupation", {})
    assert post(plain, "/generate", body)["output_ids"] == before


def test_openai_routes_need_a_tokenizer(plain):
    models = httpx.get(plain + "/v1/models").json()["data"]
    assert [m["object"] for m in models] == ["model"]
    r = httpx.post(plain + "/v1/completions", json={"model": models[0]["id"], "prompt": [5, 6], "max_tokens": 2})
    assert r.status_code == 400 and "tokenizer" in r.json()["error"]["message"]
