"""The SGLang engine end to end against `ace-jax serve` run as a real server process.

`ace-jax serve` speaks SGLang's HTTP API, so the client, the launcher, weight sync, restarts and
error handling are exercised exactly as against SGLang (which does not run on CPU).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ace_jax.inference import Buckets, JaxEngine
from ace_jax.models import get_config
from rollout.engine import EngineError, GenerateRequest, SamplingParams
from rollout.http_client import BadResponse, ServerUnreachable
from rollout.sglang import SGLangConfig, SGLangEngine
from rollout.sglang_launcher import LaunchConfig, ServerProcess, sglang_command
from tests.helpers.hf_models import random_hf_model

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUCKETS = Buckets(batch=(4,), prompt=(16,), generate=(16,))  # as the other engine tests: shared compiles
SERVE = (sys.executable, "-m", "ace_jax.cli", "serve", "--hf", "{model_path}", "--host", "{host}",
         "--port", "{port}", "--weight-version", "{weight_version}", "--batch-buckets", "4",
         "--prompt-buckets", "16", "--generate-buckets", "16", "--batch-wait-ms", "20")
ENV = (("JAX_PLATFORMS", "cpu"), ("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache")),
       ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5"), ("JAX_DEFAULT_MATMUL_PRECISION", "highest"),
       ("PYTHONPATH", str(ROOT)))
PROMPTS = [[5, 17, 33, 99], [300, 12], [44, 45, 46, 47, 48, 49, 50], [9, 10, 11]]
SHAPE = (2, 2)  # tiny-moe: 2 MoE layers, top 2


def launch_config(path: str, **kw) -> LaunchConfig:
    return LaunchConfig(model_path=path, command=SERVE, env=ENV, startup_timeout_s=180, **kw)


def greedy(n: int = 8) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    cfg = get_config("tiny-moe")
    out = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"m{seed}")
        random_hf_model(cfg, seed=seed).save_pretrained(path)
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def local(dirs):
    """In-process engines on the same weights (the reference results)."""
    return [JaxEngine.from_hf(d, buckets=BUCKETS) for d in dirs]


@pytest.fixture(scope="module")
def server(dirs):
    proc = ServerProcess(launch_config(dirs[0]))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def attached(server):
    engine = SGLangEngine(SGLangConfig(mode="attach", urls=(server.url,), routed_experts_shape=SHAPE,
                                       retries=1, backoff_s=0.1))
    yield engine
    engine.close()


def test_greedy_tokens_logprobs_and_experts_equal_the_embedded_engine(attached, local):
    reqs = [GenerateRequest(p, greedy(6 + i), return_routed_experts=True) for i, p in enumerate(PROMPTS)]
    remote, ref = attached.generate(reqs), local[0].generate(reqs)
    for [r], [c] in zip(remote, ref):
        assert r.token_ids == c.token_ids and r.finish_reason == c.finish_reason
        np.testing.assert_allclose(r.logprobs, c.logprobs, atol=1e-5)
        np.testing.assert_array_equal(r.routed_experts, c.routed_experts)
        assert r.weight_version == "default" and r.prompt_tokens == c.prompt_tokens


def test_seeded_samples_are_reproducible(attached, local):
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=42)
    reqs = [GenerateRequest(PROMPTS[0], sp, n=3), GenerateRequest(PROMPTS[1], sp, n=2)]
    first, second = attached.generate(reqs), attached.generate(reqs)
    tokens = [[c.token_ids for c in comps] for comps in first]
    assert tokens == [[c.token_ids for c in comps] for comps in second]
    assert tokens == [[c.token_ids for c in comps] for comps in local[0].generate(reqs)]
    assert len({tuple(t) for t in tokens[0]}) == 3


def test_weight_sync_and_memory_saver(attached, local, dirs):
    reqs = [GenerateRequest(p, greedy()) for p in PROMPTS]
    try:
        version = attached.update_weights_from_disk(dirs[1])
        assert version == attached.weight_version == "update-1"
        out = attached.generate(reqs)
        assert [c.token_ids for [c] in out] == [c.token_ids for [c] in local[1].generate(reqs)]
        assert {c.weight_version for [c] in out} == {"update-1"}
        with pytest.raises(BadResponse, match="Failed to update weights"):
            attached.update_weights_from_disk("/no/such/dir")
    finally:
        attached.update_weights_from_disk(dirs[0], weight_version="default")
    attached.release_memory(["weights", "kv_cache"])
    with pytest.raises(BadResponse, match="released"):
        attached.generate(reqs[:1])
    attached.resume_memory()
    assert [c.token_ids for [c] in attached.generate(reqs)] == [c.token_ids for [c] in local[0].generate(reqs)]
    assert attached.health()
    assert attached.sync_path("step-3").endswith(os.path.join("ace-jax-weights", "step-3"))


def _server_state(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/get_server_info", timeout=30) as answer:
        return json.load(answer)["internal_states"][0]


def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def _wait_pending(url: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while _server_state(url)["pending"] < count:
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.05)


def test_paused_requests_wait_and_continue_with_the_weights_synced_meanwhile(attached, local, dirs, server):
    """retract: a request sent while paused is held; the weight sync (which pauses and continues
    around its load) lets it go on, and it is served with the new weights."""
    reqs = [GenerateRequest(p, greedy()) for p in PROMPTS]
    try:
        attached.pause_generation("retract")
        thread, out = _in_thread(attached.generate, reqs)
        _wait_pending(server.url, 1)
        time.sleep(0.3)
        assert thread.is_alive() and _server_state(server.url)["paused"]
        attached.update_weights_from_disk(dirs[1], weight_version="while-paused")
        thread.join(timeout=120)
        assert not thread.is_alive() and not _server_state(server.url)["paused"]
        assert [c.token_ids for [c] in out[0]] == [c.token_ids for [c] in local[1].generate(reqs)]
        assert {c.weight_version for [c] in out[0]} == {"while-paused"}
    finally:
        attached.continue_generation()
        attached.update_weights_from_disk(dirs[0], weight_version="default")


def test_pause_abort_answers_held_requests_as_aborted(attached, local, server):
    reqs = [GenerateRequest(p, greedy()) for p in PROMPTS[:2]]
    aborted_before = _server_state(server.url)["aborted"]
    with attached.paused("in_place"):
        thread, out = _in_thread(attached.generate, reqs)
        # Both must be queued: one arriving after the abort waits, paused, for the continue.
        _wait_pending(server.url, len(reqs))
        attached.pause_generation("abort")
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert [(c.finish_reason, c.token_ids, c.logprobs) for [c] in out[0]] == [("abort", [], [])] * 2
        assert _server_state(server.url)["aborted"] == aborted_before + len(reqs)  # one call per request
    assert [c.token_ids for [c] in attached.generate(reqs)] == [c.token_ids for [c] in local[0].generate(reqs)]


def test_pause_modes_are_checked_and_routed_experts_are_announced(attached, server):
    with pytest.raises(ValueError, match="allowed"):
        attached.pause_generation("later")
    request = urllib.request.Request(f"{server.url}/pause_generation", data=b'{"mode": "later"}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400 and "retract" in info.value.read().decode()
    with pytest.raises(ValueError, match="sync_pause_mode"):
        SGLangConfig(mode="attach", urls=(server.url,), sync_pause_mode="later")
    assert attached.returns_routed_experts  # tiny-moe, and serve says enable_return_routed_experts
    plain = SGLangEngine(SGLangConfig(mode="attach", urls=(server.url,)))
    try:
        assert not plain.returns_routed_experts  # no routed_experts_shape to decode them with
    finally:
        plain.close()


def test_from_config_and_update_weights_from_a_param_tree(server, local, dirs, tmp_path):
    """The trainer's path: params -> exporter (HF save) -> /update_weights_from_disk."""
    from types import SimpleNamespace

    from flax import nnx

    from ace_jax.checkpoint import hf

    graphdef = local[0].graphdef

    def export(params, path):
        hf.save(nnx.merge(graphdef, params), path, dtype="float32")

    section = SimpleNamespace(sglang_urls=(server.url,), sglang_python="python", sglang_args=())
    engine = SGLangEngine.from_config(section, exporter=export, weight_sync_dir=str(tmp_path))
    reqs = [GenerateRequest(p, greedy()) for p in PROMPTS]
    try:
        assert engine.update_weights(local[1].state, weight_version="7") == "7"
        first = engine.sync_path("7")
        assert os.path.isfile(os.path.join(first, "config.json"))
        assert [c.token_ids for [c] in engine.generate(reqs)] == [c.token_ids for [c] in local[1].generate(reqs)]
        engine.update_weights(local[0].state, weight_version="8")
        assert not os.path.exists(first) and os.path.isdir(engine.sync_path("8"))
        assert [c.token_ids for [c] in engine.generate(reqs)] == [c.token_ids for [c] in local[0].generate(reqs)]
    finally:
        engine.update_weights_from_disk(dirs[0], weight_version="default")
        engine.close()
    with pytest.raises(EngineError, match="needs the model directory"):
        SGLangEngine.from_config(SimpleNamespace(sglang_urls=()))


def test_launch_command_states_the_flags():
    cfg = LaunchConfig(model_path="/m", python="/envs/sglang/bin/python", tp_size=4, ep_size=4, dp_size=2,
                       enable_dp_attention=True, mem_fraction_static=0.7, enable_memory_saver=True,
                       enable_return_routed_experts=True, extra_args=("--log-level", "warning"))
    cmd = sglang_command(cfg, "/m", 31000, "v3")
    assert cmd[:3] == ["/envs/sglang/bin/python", "-m", "sglang.launch_server"]
    joined = " ".join(cmd)
    for part in ("--model-path /m", "--port 31000", "--tp-size 4", "--ep-size 4", "--dp-size 2",
                 "--enable-dp-attention", "--mem-fraction-static 0.7", "--skip-tokenizer-init",
                 "--enable-memory-saver", "--enable-return-routed-experts", "--weight-version v3",
                 "--sampling-defaults openai", "--log-level warning"):
        assert part in joined
    assert SamplingParams(temperature=0.7).to_sglang() | {"n": 1} == {
        "temperature": 0.7, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "max_new_tokens": 128,
        "stop_token_ids": [], "ignore_eos": False, "n": 1}


def test_a_server_that_cannot_start_shows_its_log():
    cfg = LaunchConfig(model_path="/m", command=(sys.executable, "-c", "print('no GPU here'); raise SystemExit(3)"))
    with pytest.raises(EngineError, match=r"(?s)exited with code 3.*no GPU here"):
        SGLangEngine(SGLangConfig(mode="launch", launch=cfg))


# ----------------------------------------------------------------------------- broken servers
class CannedServer:
    """A raw socket server (test scaffolding, not a project component): answers
    GET /get_weight_version properly and every POST /generate with `raw` bytes, then closes."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536)
                if request.startswith(b"GET /get_weight_version"):
                    body = b'{"weight_version": "default"}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    conn.sendall(self.raw)

    def close(self):
        self.sock.close()


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)


_GOOD_META = {"finish_reason": {"type": "length", "length": 2}, "prompt_tokens": 2, "weight_version": "default"}


@pytest.mark.parametrize("raw, error, words", ids=["not-json", "no-meta", "bad-finish", "logprob-count", "n-mismatch",
                                                   "truncated", "http-400"], argvalues=[
    (_ok(b"<html>oops</html>"), BadResponse, "not JSON"),
    (_ok(json.dumps({"output_ids": [1, 2]}).encode()), BadResponse, "no 'meta_info'"),
    (_ok(json.dumps({"output_ids": [1, 2], "meta_info": {**_GOOD_META, "finish_reason": {"type": "done"}}}).encode()),
     BadResponse, "finish_reason"),
    (_ok(json.dumps({"output_ids": [1, 2], "meta_info": {**_GOOD_META, "output_token_logprobs": [[-1.0, 1, None]]}})
         .encode()), BadResponse, "1 entries for 2 output ids"),
    (_ok(json.dumps([{"output_ids": [1], "meta_info": _GOOD_META}] * 2).encode()), BadResponse, "expected 1 sample"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"output_ids\": [1,",
     ServerUnreachable, "truncated"),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"error\": {\"message\": \"x\"}}",
     BadResponse, "HTTP 400"),
])
def test_malformed_or_truncated_responses_are_clear_errors(raw, error, words):
    canned = CannedServer(raw)
    engine = SGLangEngine(SGLangConfig(mode="attach", urls=(canned.url,), retries=1, backoff_s=0.01))
    try:
        with pytest.raises(error, match=words) as info:
            engine.generate([GenerateRequest([5, 6], greedy(2))])
        assert canned.url in str(info.value) and "request 0" in str(info.value)
    finally:
        engine.close()
        canned.close()


# ----------------------------------------------------------------------------- dying servers
def _generate_until_error(engine, reqs, results: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            results.append(engine.generate(reqs))
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            results.append(exc)
            return


@pytest.mark.slow
def test_attached_server_killed_mid_run_is_a_clear_error(dirs):
    proc = ServerProcess(launch_config(dirs[0]))
    proc.start()
    engine = SGLangEngine(SGLangConfig(mode="attach", urls=(proc.url,), retries=2, backoff_s=0.1))
    results: list = []
    stop = threading.Event()
    reqs = [GenerateRequest(p, greedy(16)) for p in PROMPTS * 2]
    worker = threading.Thread(target=_generate_until_error, args=(engine, reqs, results, stop))
    try:
        worker.start()
        while not results:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        worker.join(timeout=60)
        assert not worker.is_alive()
        error = results[-1]
        assert isinstance(error, EngineError)
        assert "unreachable" in str(error) and "not restarted" in str(error) and proc.url in str(error)
    finally:
        stop.set()
        engine.close()
        proc.stop()


@pytest.mark.slow
def test_launched_server_killed_mid_run_is_restarted_with_the_latest_weights(dirs, local):
    engine = SGLangEngine(SGLangConfig(mode="launch", launch=launch_config(dirs[0]), retries=3, backoff_s=0.2,
                                       routed_experts_shape=SHAPE))
    reqs = [GenerateRequest(p, greedy(16)) for p in PROMPTS * 2]
    try:
        assert engine.update_weights_from_disk(dirs[1], weight_version="v7") == "v7"
        expected = [c.token_ids for [c] in local[1].generate(reqs)]
        results: list = []
        stop = threading.Event()
        worker = threading.Thread(target=_generate_until_error, args=(engine, reqs, results, stop))
        worker.start()
        while not results:
            time.sleep(0.05)
        first_pid = engine.process.pid
        os.killpg(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while engine.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        count = len(results)
        while len(results) < count + 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # two more complete calls, at least one of them in flight during the kill
        stop.set()
        worker.join(timeout=120)
        assert engine.restarts == 1 and engine.process.pid != first_pid
        assert all(not isinstance(r, Exception) for r in results), results[-1]
        assert all([c.token_ids for [c] in r] == expected for r in results)
        assert {c.weight_version for r in results for [c] in r} == {"v7"}
    finally:
        engine.close()
    assert not engine.process.alive()
