"""The SGLang rollout engine: SGLang servers spoken to over HTTP (SGLang 0.5.23 native API).

Two modes. `launch`: start `python -m sglang.launch_server` (its own Python env) and restart
it if it dies, retrying the requests that were in flight. `attach`: use running servers by URL,
round robin (data-parallel servers); a dead attached server is an error. Every request states
its sampling fully, so SGLang's generation_config defaults never apply. A request is never
dropped: `generate` returns every completion or raises.

Weight sync: the trainer exports HF weights to a directory (`sync_path()`: /dev/shm or a shared
filesystem) and calls `update_weights_from_disk(path)`; each server gets a new weight_version,
must report success and then that version. Around the load, generation is paused with
`sync_pause_mode` (/pause_generation; default "retract": requests in flight wait and go on
with the new weights) and continued after (/continue_generation), so a sync never waits for
long generations to drain and no request is lost.

Routed experts (routing replay): asked for when `routed_experts_shape` is set and the server
returns them (launched with --enable-return-routed-experts, or an attached server whose
/get_server_info says `enable_return_routed_experts`); `returns_routed_experts` tells.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import itertools
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from rollout.engine import FINISH_REASONS, PAUSE_MODES, Completion, EngineError, GenerateRequest
from rollout.http_client import BadResponse, HttpClient, ServerUnreachable
from rollout.sglang_launcher import LaunchConfig, ServerProcess

MODES = ("launch", "attach")


@dataclasses.dataclass(frozen=True)
class SGLangConfig:
    """Client settings. `launch` is used in launch mode, `urls` in attach mode.

    `routed_experts_shape` = (moe_layers, top_k) is needed to unpack routed experts."""

    mode: str = "launch"
    launch: LaunchConfig | None = None
    urls: tuple[str, ...] = ()
    max_concurrency: int = 64
    request_timeout_s: float = 3600.0
    connect_timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    max_restarts: int = 3
    routed_experts_shape: tuple[int, int] | None = None
    weight_sync_dir: str | None = None
    sync_pause_mode: str | None = "retract"  # PAUSE_MODES, or None: no pause around a weight sync

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sglang 'mode' is {self.mode!r}; allowed: {list(MODES)}")
        if self.mode == "launch" and self.launch is None:
            raise ValueError("sglang mode 'launch' needs a 'launch' config (model path, flags)")
        if self.mode == "attach" and not self.urls:
            raise ValueError("sglang mode 'attach' needs at least one server URL in 'urls'")
        if self.sync_pause_mode is not None and self.sync_pause_mode not in PAUSE_MODES:
            raise ValueError(f"sglang 'sync_pause_mode' is {self.sync_pause_mode!r}; allowed: "
                             f"{list(PAUSE_MODES)} or None")
        if self.max_concurrency < 1:
            raise ValueError(f"sglang 'max_concurrency' must be >= 1, got {self.max_concurrency}")


class SGLangEngine:
    """Implements `rollout.engine.RolloutEngine` over SGLang's HTTP API."""

    def __init__(self, cfg: SGLangConfig, exporter: Callable[[Any, str], None] | None = None):
        """`exporter(params, directory)` writes HF weights; it makes `update_weights(params)` work."""
        self.cfg = cfg
        self.exporter = exporter
        self._synced: str | None = None
        self.http = HttpClient(timeout_s=cfg.request_timeout_s, connect_timeout_s=cfg.connect_timeout_s,
                               retries=cfg.retries, backoff_s=cfg.backoff_s, max_connections=cfg.max_concurrency)
        self.process: ServerProcess | None = None
        self.restarts = 0
        self.weight_version: str | None = None
        self._updates = 0
        self._restart_lock = threading.Lock()
        self._generation = 0  # bumped by each restart, so concurrent failures restart once
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="sglang")
        if cfg.mode == "launch":
            self.process = ServerProcess(cfg.launch)
            self.process.start()
            self.urls = [self.process.url]
        else:
            self.urls = [u.rstrip("/") for u in cfg.urls]
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._url_lock = threading.Lock()
        self.weight_version = self._get(self.urls[0], "/get_weight_version").get("weight_version")
        self.returns_routed_experts = cfg.routed_experts_shape is not None and (
            cfg.launch.enable_return_routed_experts if cfg.mode == "launch" else
            all(self._get(u, "/get_server_info").get("enable_return_routed_experts") is True for u in self.urls))

    @classmethod
    def from_config(cls, section: Any, *, model_path: str | None = None,
                    exporter: Callable[[Any, str], None] | None = None,
                    routed_experts_shape: tuple[int, int] | None = None, **overrides: Any) -> "SGLangEngine":
        """From an experiment's rollout section (`sglang_urls`, `sglang_python`, `sglang_args`):
        attach to the URLs when there are any, else launch SGLang on `model_path`."""
        urls = tuple(getattr(section, "sglang_urls", ()) or ())
        if urls:
            return cls(SGLangConfig(mode="attach", urls=urls, routed_experts_shape=routed_experts_shape, **overrides),
                       exporter)
        if not model_path:
            raise EngineError("launching SGLang needs the model directory (model_path); "
                              "or set rollout.sglang_urls to attach to running servers")
        launch = LaunchConfig(model_path=model_path, python=getattr(section, "sglang_python", "python"),
                              extra_args=tuple(getattr(section, "sglang_args", ()) or ()),
                              enable_return_routed_experts=routed_experts_shape is not None)
        return cls(SGLangConfig(mode="launch", launch=launch, routed_experts_shape=routed_experts_shape, **overrides),
                   exporter)

    # ------------------------------------------------------------------------- protocol
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """All requests concurrently (at most `max_concurrency` in flight); raises on any failure."""
        futures = [self._pool.submit(self._generate_one, i, r) for i, r in enumerate(requests)]
        results, errors = [], []
        for f in futures:  # wait for every request before raising, so none is left running unseen
            try:
                results.append(f.result())
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                errors.append(exc)
        if errors:
            first = errors[0]
            kind = type(first) if isinstance(first, EngineError) else EngineError
            raise kind(f"{len(errors)} of {len(requests)} requests failed; first: {first}") from first
        return results

    def update_weights_from_disk(self, path: str, weight_version: str | None = None) -> str:
        """Every server loads `path` (generation paused meanwhile, see `sync_pause_mode`); checks
        success and that it then reports the new version."""
        self._updates += 1
        version = str(weight_version) if weight_version is not None else f"update-{self._updates}"
        mode = self.cfg.sync_pause_mode
        # in_place keeps the paused requests' KV cache, which SGLang then refuses to flush
        payload = {"model_path": path, "weight_version": version, "flush_cache": mode != "in_place",
                   "abort_all_requests": False}
        with self.paused(mode) if mode else contextlib.nullcontext():
            for url in self.urls:
                answer = self._post(url, "/update_weights_from_disk", payload)
                if not isinstance(answer, dict) or answer.get("success") is not True:
                    raise EngineError(f"{url}/update_weights_from_disk({path}) did not succeed: {answer}")
                reported = self._get(url, "/get_weight_version").get("weight_version")
                if reported != version:
                    raise EngineError(f"{url} reports weight_version {reported!r} after loading {path}, "
                                      f"expected {version!r}")
        if self.process is not None:  # a restarted server starts from the latest weights
            self.process.model_path, self.process.weight_version = path, version
        self.weight_version = version
        return version

    def update_weights(self, params: Any, weight_version: str | None = None) -> str:
        """Export `params` with the exporter to `sync_path(version)`, load them on every server,
        then delete the previous export (the latest stays: a restarted server starts from it)."""
        if self.exporter is None:
            raise EngineError("update_weights(params) needs an exporter(params, directory); or export the "
                              "weights yourself and call update_weights_from_disk(directory)")
        version = str(weight_version) if weight_version is not None else f"update-{self._updates + 1}"
        path = self.sync_path(version)
        self.exporter(params, path)
        self.update_weights_from_disk(path, version)
        previous, self._synced = self._synced, path
        if previous and previous != path:
            shutil.rmtree(previous, ignore_errors=True)
        return version

    # ------------------------------------------------------------------------- pause / continue
    def pause_generation(self, mode: str = "abort") -> None:
        """Pause every server (SGLang's /pause_generation): "abort" answers the requests in flight
        as aborted; "retract" and "in_place" hold them until `continue_generation`."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r}; allowed: {list(PAUSE_MODES)}")
        self._control("/pause_generation", {"mode": mode})

    def continue_generation(self) -> None:
        """Resume every server (SGLang's /continue_generation)."""
        self._control("/continue_generation", {})

    @contextlib.contextmanager
    def paused(self, mode: str = "retract"):
        """Generation paused for the block, continued after it (also when it raises)."""
        self.pause_generation(mode)
        try:
            yield
        finally:
            self.continue_generation()

    def _control(self, route: str, payload: dict) -> None:
        for url in self.urls:
            answer = self._post(url, route, payload)
            if not isinstance(answer, dict) or answer.get("status") != "ok":
                raise EngineError(f"{url}{route} did not succeed: {answer}")

    def health(self) -> bool:
        for url in self.urls:
            try:
                self.http.once("GET", f"{url}/health", timeout_s=10.0).raise_for_status()
            except Exception:  # noqa: BLE001 - unhealthy
                return False
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.http.close()
        if self.process is not None:
            self.process.stop()

    # ------------------------------------------------------------------------- memory saver
    def release_memory(self, tags: Sequence[str] | None = None) -> None:
        """Free the servers' GPU memory (weights, KV cache) for a training phase."""
        self._memory("/release_memory_occupation", tags)

    def resume_memory(self, tags: Sequence[str] | None = None) -> None:
        self._memory("/resume_memory_occupation", tags)

    def _memory(self, route: str, tags: Sequence[str] | None) -> None:
        if self.cfg.mode == "launch" and not self.cfg.launch.enable_memory_saver:
            raise EngineError(f"{route} needs the server launched with enable_memory_saver")
        payload = {} if tags is None else {"tags": list(tags)}
        for url in self.urls:
            self._post(url, route, payload, expect_json=False)

    # ------------------------------------------------------------------------- weight sync dir
    def sync_path(self, name: str) -> str:
        """Where the trainer should export the next weights: weight_sync_dir, else /dev/shm, else tmp."""
        root = self.cfg.weight_sync_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        return os.path.join(root, "ace-jax-weights", name)

    # ------------------------------------------------------------------------- internals
    def _pick_url(self) -> str:
        with self._url_lock:
            return self.urls[next(self._next_url)]

    def _get(self, url: str, route: str) -> Any:
        return self.http.request("GET", f"{url}{route}", timeout_s=60.0, on_failure=self._failure_handler())

    def _post(self, url: str, route: str, payload: Any, expect_json: bool = True) -> Any:
        return self.http.request("POST", f"{url}{route}", payload, on_failure=self._failure_handler(),
                                 expect_json=expect_json)

    def _failure_handler(self):
        generation = self._generation

        def on_failure(exc: Exception, attempt: int) -> None:
            nonlocal generation
            if self.process is None:
                return  # attach mode: retry with backoff, then ServerUnreachable
            generation = self._restart_if_dead(generation)

        return on_failure

    def _restart_if_dead(self, seen_generation: int) -> int:
        """Restart the launched server if it has exited; one restart however many requests saw it."""
        with self._restart_lock:
            if self._generation != seen_generation:
                return self._generation  # another request already restarted it
            if not self.process.wait_exit(timeout_s=2.0):
                return self._generation  # alive: a transient failure, retried with backoff
            if self.restarts >= self.cfg.max_restarts:
                raise EngineError(f"the SGLang server at {self.process.url} died again after "
                                  f"{self.restarts} restarts; giving up")
            self.restarts += 1
            self.process.restart()
            self._generation += 1
            return self._generation

    def _generate_one(self, index: int, request: GenerateRequest) -> list[Completion]:
        payload = request_payload(request)
        for _ in range(self.cfg.max_restarts + 2):
            url = self._pick_url()
            generation = self._generation
            try:
                data = self._post(url, "/generate", payload)
                return parse_samples(data, request, self.cfg.routed_experts_shape, url)
            except ServerUnreachable as exc:
                if self.process is None:
                    raise ServerUnreachable(f"request {index}: the attached SGLang server {url} is unreachable "
                                            f"or failing (attached servers are not restarted): {exc}") from exc
                if self._generation != generation:
                    continue  # restarted while we retried: try again on the new server
                raise ServerUnreachable(f"request {index}: {exc}") from exc
            except EngineError as exc:
                raise type(exc)(f"request {index}: {exc}") from exc
        raise EngineError(f"request {index}: the server kept dying ({self.restarts} restarts)")


def request_payload(request: GenerateRequest) -> dict[str, Any]:
    """SGLang's /generate body for one prompt with every sampling field stated.

    With a seed and n > 1, the n samples go as a batch of n copies of the prompt, sample i with
    `sampling_seed` seed + i: SGLang gives all n samples of one request the same seed, which
    under deterministic inference would make every sample of a group identical."""
    sampling = request.sampling.to_sglang()
    payload: dict[str, Any] = {"return_logprob": request.return_logprob}
    if request.n > 1 and request.sampling.seed is not None:
        payload["input_ids"] = [list(request.input_ids) for _ in range(request.n)]
        payload["sampling_params"] = [{**sampling, "sampling_seed": int(request.sampling.seed) + i}
                                      for i in range(request.n)]
        if request.rid is not None:
            payload["rid"] = [f"{request.rid}-{i}" for i in range(request.n)]
    else:
        payload["input_ids"] = list(request.input_ids)
        payload["sampling_params"] = {**sampling, "n": request.n}
        if request.rid is not None:
            payload["rid"] = request.rid
    if request.return_routed_experts:
        payload["return_routed_experts"] = True
    return payload


def _fail(url: str, message: str) -> BadResponse:
    return BadResponse(f"malformed /generate response from {url}: {message}")


def parse_samples(data: Any, request: GenerateRequest, routed_shape: tuple[int, int] | None,
                  url: str = "server") -> list[Completion]:
    """The `n` completions of one request from SGLang's answer (a dict when n == 1, else a list)."""
    samples = [data] if isinstance(data, dict) else data
    if not isinstance(samples, list) or len(samples) != request.n:
        raise _fail(url, f"expected {request.n} sample(s), got {type(data).__name__}"
                    f"{'' if not isinstance(data, list) else f' of {len(data)}'}")
    return [parse_sample(s, request, routed_shape, url) for s in samples]


def parse_sample(sample: Any, request: GenerateRequest, routed_shape: tuple[int, int] | None,
                 url: str = "server") -> Completion:
    if not isinstance(sample, dict) or not isinstance(sample.get("meta_info"), dict):
        raise _fail(url, f"a sample has no 'meta_info' object: {str(sample)[:200]}")
    ids, meta = sample.get("output_ids"), sample["meta_info"]
    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise _fail(url, "'output_ids' is missing or not a list of ints")
    reason = meta.get("finish_reason")
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind not in FINISH_REASONS:
        raise _fail(url, f"meta_info.finish_reason {reason!r} is not one of {list(FINISH_REASONS)}")
    logprobs = None
    if request.return_logprob:
        entries = meta.get("output_token_logprobs")
        if not isinstance(entries, list) or len(entries) != len(ids):
            raise _fail(url, f"meta_info.output_token_logprobs has {len(entries) if isinstance(entries, list) else entries!r} "
                        f"entries for {len(ids)} output ids")
        try:
            logprobs = [float(e[0]) for e in entries]
            mismatch = [i for i, (e, t) in enumerate(zip(entries, ids)) if int(e[1]) != t]
        except (TypeError, IndexError, ValueError) as exc:
            raise _fail(url, f"meta_info.output_token_logprobs entries are not [logprob, token_id, text]: {exc}") from exc
        if mismatch:
            raise _fail(url, f"output_token_logprobs token ids differ from output_ids at positions {mismatch[:5]}")
    prompt_tokens = meta.get("prompt_tokens", len(request.input_ids))
    experts = None
    if request.return_routed_experts and kind != "abort":
        experts = decode_routed_experts(meta.get("routed_experts"), prompt_tokens + len(ids) - 1, routed_shape, url)
    matched = reason.get("matched") if isinstance(reason, dict) else None
    return Completion(token_ids=list(ids), logprobs=logprobs, finish_reason=kind, prompt_tokens=int(prompt_tokens),
                      routed_experts=experts, weight_version=meta.get("weight_version"),
                      matched_stop=matched if isinstance(matched, int) else None)


def decode_routed_experts(value: Any, rows: int, shape: tuple[int, int] | None, url: str = "server") -> np.ndarray:
    """base64 little-endian int32 [rows, layers * top_k] -> [rows, layers, top_k]."""
    if shape is None:
        raise EngineError("routed experts were asked for but SGLangConfig.routed_experts_shape "
                          "(moe_layers, top_k) is not set")
    if not isinstance(value, str):
        raise _fail(url, "meta_info.routed_experts is missing (was the server launched with "
                         "--enable-return-routed-experts?)")
    try:
        flat = np.frombuffer(base64.b64decode(value, validate=True), dtype="<i4")
    except (binascii.Error, ValueError) as exc:
        raise _fail(url, f"meta_info.routed_experts is not base64 int32: {exc}") from exc
    layers, k = shape
    if flat.size != rows * layers * k:
        raise _fail(url, f"meta_info.routed_experts has {flat.size} ids, expected {rows} tokens x {layers} "
                         f"layers x {k} = {rows * layers * k}")
    return flat.reshape(rows, layers, k).astype(np.int32)
