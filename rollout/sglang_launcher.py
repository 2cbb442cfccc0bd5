"""Start, watch, restart and stop one SGLang server process (it lives in its own Python env).

The command is `python -m sglang.launch_server ...` built from the config, or any command given
as a template whose `{model_path}`, `{host}`, `{port}` and `{weight_version}` are filled in (so
tests run `ace-jax serve`, which speaks the same API, as the server). Output goes to a log file
whose tail is shown when the server fails to come up.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import tempfile
import time
from typing import Sequence

import httpx

from rollout.engine import EngineError


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How to start SGLang. `command`, when given, replaces the `sglang.launch_server` command."""

    model_path: str
    python: str = "python"
    host: str = "127.0.0.1"
    port: int = 0                      # 0: a free port
    tp_size: int = 1
    ep_size: int = 1
    dp_size: int = 1
    enable_dp_attention: bool = False
    mem_fraction_static: float | None = None
    skip_tokenizer_init: bool = True
    enable_memory_saver: bool = False
    enable_return_routed_experts: bool = False
    enable_deterministic_inference: bool = False
    sampling_defaults: str | None = "openai"
    extra_args: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout_s: float = 900.0
    log_path: str | None = None


def sglang_command(cfg: LaunchConfig, model_path: str, port: int, weight_version: str) -> list[str]:
    """The argv that starts the server."""
    if cfg.command is not None:
        fields = {"model_path": model_path, "host": cfg.host, "port": str(port), "weight_version": weight_version,
                  "python": cfg.python}
        return [part.format(**fields) for part in cfg.command]
    cmd = [cfg.python, "-m", "sglang.launch_server", "--model-path", model_path, "--host", cfg.host,
           "--port", str(port), "--tp-size", str(cfg.tp_size), "--weight-version", weight_version]
    if cfg.ep_size > 1:
        cmd += ["--ep-size", str(cfg.ep_size)]
    if cfg.dp_size > 1:
        cmd += ["--dp-size", str(cfg.dp_size)] + (["--enable-dp-attention"] if cfg.enable_dp_attention else [])
    if cfg.mem_fraction_static is not None:
        cmd += ["--mem-fraction-static", str(cfg.mem_fraction_static)]
    if cfg.sampling_defaults:
        cmd += ["--sampling-defaults", cfg.sampling_defaults]
    flags = {"--skip-tokenizer-init": cfg.skip_tokenizer_init, "--enable-memory-saver": cfg.enable_memory_saver,
             "--enable-return-routed-experts": cfg.enable_return_routed_experts,
             "--enable-deterministic-inference": cfg.enable_deterministic_inference}
    return cmd + [flag for flag, on in flags.items() if on] + list(cfg.extra_args)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One launched server: `start()` waits for GET /health; `restart()` after it died."""

    def __init__(self, cfg: LaunchConfig):
        self.cfg = cfg
        self.port = cfg.port or free_port(cfg.host)
        self.url = f"http://{cfg.host}:{self.port}"
        self.log_path = cfg.log_path or os.path.join(tempfile.mkdtemp(prefix="sglang-"), "server.log")
        self.model_path = cfg.model_path
        self.weight_version = "default"
        self.starts = 0
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_exit(self, timeout_s: float) -> bool:
        """True when the process has exited within `timeout_s`."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> None:
        argv = sglang_command(self.cfg, self.model_path, self.port, self.weight_version)
        env = {**os.environ, **dict(self.cfg.env)}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True)
            except OSError as exc:
                raise EngineError(f"cannot start the SGLang server {argv[:3]}: {exc}") from exc
        self.starts += 1
        self._wait_ready(argv)

    def _wait_ready(self, argv: Sequence[str]) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineError(f"the server exited with code {self._proc.returncode} while starting "
                                  f"({' '.join(argv)}); log tail ({self.log_path}):\n{log_tail(self.log_path)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise EngineError(f"the server at {self.url} did not answer /health within {self.cfg.startup_timeout_s:.0f} s; "
                          f"log tail ({self.log_path}):\n{log_tail(self.log_path)}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group (it was started in its own session), then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue
