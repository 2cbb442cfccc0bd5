#!/usr/bin/env bash
# System parts the quick start needs, installed when missing (idempotent).
#   scripts/system_deps.sh demo   bubblewrap (or an already running Docker engine) for the sandbox
#   scripts/system_deps.sh test   bubblewrap, docker.io and a running dockerd
# As root with apt-get, whatever is missing is installed and dockerd is started. Otherwise the
# script stops with one line naming the command to run, before any other work.
set -uo pipefail

target="${1:-test}"
case "$target" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

have() { command -v "$1" >/dev/null 2>&1; }
docker_up() { have docker && timeout 10 docker info >/dev/null 2>&1; }
can_install() { [ "$(id -u)" = 0 ] && have apt-get; }

missing=()
if [ "$target" = demo ]; then
  have bwrap || docker_up || missing+=(bubblewrap)
else
  have bwrap || missing+=(bubblewrap)
  have dockerd || docker_up || missing+=(docker.io)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if ! can_install; then
    echo "ace-jax: missing system packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "ace-jax: installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "ace-jax: apt-get could not install ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ "$target" = test ] && ! docker_up; then
  if [ "$(id -u)" != 0 ]; then
    echo "ace-jax: no Docker engine is running; run: sudo dockerd &  (or sudo systemctl start docker)" >&2
    exit 1
  fi
  log="${TMPDIR:-/tmp}/ace-jax-dockerd.log"
  setsid nohup dockerd >"$log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do docker_up && break; sleep 1; done
  if ! docker_up; then
    echo "ace-jax: dockerd did not start (see $log); run: sudo dockerd &" >&2
    exit 1
  fi
fi
exit 0
