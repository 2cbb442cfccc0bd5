"""`ace-jax serve`'s OpenAI routes, driven by the official `openai` client against a real server process.

The checkpoint is tiny and random but carries the real Qwen3 tokenizer and chat template, so
prompts, usage and decoded text are those a real Qwen3 checkpoint would give.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from ace_jax.tokenizer import load_qwen3_tokenizer
from tests.helpers.serving import serve_process, tiny_qwen3_checkpoint

MODEL = "tiny-qwen3"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime number."}]
BUCKETS = ("--batch-buckets", "4", "--prompt-buckets", "64", "--generate-buckets", "16", "--batch-wait-ms", "100")


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen3_tokenizer()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    proc = serve_process(tiny_qwen3_checkpoint(tmp_path_factory.mktemp("qwen3")), *BUCKETS, name=MODEL)
    proc.start()
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def template_ids(tokenizer, messages=MESSAGES, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False, **kwargs))


def generate(url: str, ids: list[int], **sampling) -> dict | list:
    body = {"input_ids": ids, "sampling_params": {"temperature": 0.0, "max_new_tokens": 8, **sampling},
            "return_logprob": True}
    r = httpx.post(f"{url}/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def visible_text(tokenizer, ids: list[int], finish: dict) -> str:
    return tokenizer.decode(ids[:-1] if finish["type"] == "stop" else ids, skip_special_tokens=True)


def test_models_lists_the_served_model(client):
    [model] = client.models.list().data
    assert model.id == MODEL and model.owned_by == "ace-jax"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_greedy_chat_equals_generate_and_usage_is_the_tokenizers(client, url, tokenizer):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                         logprobs=True)
    ids = template_ids(tokenizer)
    ref = generate(url, ids)
    [choice] = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == visible_text(tokenizer, ref["output_ids"], ref["meta_info"]["finish_reason"])
    assert out.usage.prompt_tokens == len(ids) == ref["meta_info"]["prompt_tokens"]
    assert out.usage.completion_tokens == len(ref["output_ids"]) == len(choice.logprobs.content)
    assert out.usage.total_tokens == len(ids) + len(ref["output_ids"])
    assert [e.token for e in choice.logprobs.content] == [tokenizer.decode([t]) for t in ref["output_ids"]]
    np.testing.assert_allclose([e.logprob for e in choice.logprobs.content],
                               [e[0] for e in ref["meta_info"]["output_token_logprobs"]], atol=1e-5)
    assert choice.finish_reason == {"length": "length", "stop": "stop"}[ref["meta_info"]["finish_reason"]["type"]]
    assert out.model == MODEL and out.object == "chat.completion" and out.id.startswith("chatcmpl-")


def test_thinking_toggle_goes_through_the_chat_template(client, tokenizer):
    off = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    on = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0)
    assert off.usage.prompt_tokens == len(template_ids(tokenizer, enable_thinking=False))
    assert on.usage.prompt_tokens == len(template_ids(tokenizer))
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # the empty <think></think> block


def test_streamed_chat_joins_to_the_whole_answer(client, url):
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    scored = [c for c in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                                        stream=True, logprobs=True, top_logprobs=2)
              if c.choices and c.choices[0].logprobs]
    assert len(scored) == whole.usage.completion_tokens
    for chunk in scored:
        [entry] = chunk.choices[0].logprobs.content
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token  # greedy
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    raw = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": MODEL, "messages": MESSAGES, "max_tokens": 2, "stream": True})
    events = [line for line in raw.text.splitlines() if line]
    assert raw.headers["content-type"] == "text/event-stream" and events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_n_seeded_samples_equal_generate(client, url, tokenizer):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=1.0, top_p=0.9, n=3, seed=7)
    first, again = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    ref = generate(url, template_ids(tokenizer), temperature=1.0, top_p=0.9, max_new_tokens=6, n=3,
                   sampling_seed=7)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert texts == [c.message.content for c in again.choices]
    assert texts == [visible_text(tokenizer, r["output_ids"], r["meta_info"]["finish_reason"]) for r in ref]
    assert first.usage.completion_tokens == sum(len(r["output_ids"]) for r in ref)


def test_completions_text_and_token_prompts_stream_and_top_logprobs(client, url, tokenizer):
    prompt = "def fibonacci(n):"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    by_text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    ref = generate(url, ids)
    [choice] = by_text.choices
    assert choice.text == by_ids.choices[0].text == visible_text(tokenizer, ref["output_ids"],
                                                                  ref["meta_info"]["finish_reason"])
    assert by_text.usage.prompt_tokens == len(ids) and by_text.usage.completion_tokens == len(ref["output_ids"])
    lp = choice.logprobs
    assert lp.tokens == [tokenizer.decode([t]) for t in ref["output_ids"]]
    for chosen, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top, key=top.get) == chosen  # greedy: the chosen token is the likeliest
        assert top[chosen] == pytest.approx(logprob, abs=1e-4)
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason
    two = client.completions.create(model=MODEL, prompt=[prompt, "import numpy"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text == two.choices[1].text == choice.text[:len(two.choices[0].text)]


def test_stop_strings_cut_the_text_and_the_bill(client):
    whole = client.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=16, temperature=0)
    text = whole.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=16, temperature=0,
                                    stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < whole.usage.completion_tokens


def test_openai_and_generate_requests_share_the_batcher(client, url, tokenizer):
    ids = template_ids(tokenizer)
    calls = [lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                                    temperature=0).choices[0].message.content,
             lambda: client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0).choices[0].text,
             lambda: generate(url, ids)["output_ids"]]
    alone = [call() for call in calls]
    before = httpx.get(f"{url}/get_server_info").json()["internal_states"][0]
    with ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(lambda call: call(), calls))
    after = httpx.get(f"{url}/get_server_info").json()["internal_states"][0]
    assert together == alone and alone[0] == alone[1]
    assert after["calls"] - before["calls"] == 3 and after["batches"] - before["batches"] < 3


def test_error_shapes(client, url):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert err.value.status_code == 404 and err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature="hot")
    assert err.value.code == "invalid_type" and err.value.param == "temperature"
    assert err.value.type == "invalid_request_error"
    cases = [({"model": MODEL}, "messages", "missing_required_parameter"),
             ({"model": MODEL, "messages": "hi"}, "messages", "invalid_type"),
             ({"model": MODEL, "messages": MESSAGES, "n": 1.5}, "n", "invalid_type"),
             ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "invalid_value"),
             ({"model": MODEL, "messages": MESSAGES, "top_logprobs": 2}, "top_logprobs", None),
             ({"model": MODEL, "messages": MESSAGES, "frequency_penalty": 0.5}, "frequency_penalty",
              "unsupported_parameter"),
             ({"model": MODEL, "messages": MESSAGES, "tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
             ({"model": MODEL, "messages": MESSAGES, "stop": ["a", ""]}, "stop", "invalid_value"),
             ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0]", "invalid_type"),
             ({"model": MODEL, "messages": MESSAGES, "bogus": 1}, "bogus", "unknown_parameter")]
    for body, param, code in cases:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), body
    r = httpx.post(f"{url}/v1/completions", content=b"{nope", timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    too_long = httpx.post(f"{url}/v1/completions", timeout=60,
                          json={"model": MODEL, "prompt": list(range(100, 200)), "max_tokens": 4})
    assert too_long.status_code == 400 and "prompt length" in too_long.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/nope").json()["error"]["type"] == "invalid_request_error"
    assert json.loads(httpx.get(f"{url}/v1/models").text)["object"] == "list"
