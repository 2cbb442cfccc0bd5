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
  : >"$log"
  # Try the default daemon first; where its networking or storage cannot come up in this
  # machine's sandbox (no iptables, no overlay mounts), fall back to the settings that need
  # neither (the tests build images and run containers with --network none).
  for extra in "" "--iptables=false --ip6tables=false --bridge=none" \
               "--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs"; do
    pkill -x dockerd 2>/dev/null && sleep 2
    rm -f /var/run/docker.pid
    echo "ace-jax: starting dockerd ${extra:-(default settings)}" >>"$log"
    # shellcheck disable=SC2086
    setsid nohup dockerd $extra >>"$log" 2>&1 < /dev/null &
    for _ in $(seq 1 40); do docker_up && break; sleep 1; done
    docker_up && break
    echo "ace-jax: dockerd ${extra:-(default settings)} did not answer within 40 s" >&2
  done
  if ! docker_up; then
    echo "ace-jax: dockerd did not start (log: $log); its last lines:" >&2
    tail -n 15 "$log" >&2
    echo "ace-jax: run: sudo dockerd &" >&2
    exit 1
  fi
fi
exit 0
