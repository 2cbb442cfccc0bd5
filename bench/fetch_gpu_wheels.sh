#!/usr/bin/env bash
# Download tokamax (the `gpu` extra) and the packages it needs beyond JAX / flax into bench/.wheels
# (git-ignored), for bench/device_check.sh on a machine that cannot download. Python 3.11 wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download -q --no-deps -d bench/.wheels tokamax==0.0.12 qwix einshape jaxtyping wadler_lindig \
  typeguard==2.13.3 immutabledict absl-py tensorboardX annotated-types typing-inspection pydantic==2.14.4 \
  pydantic-core==2.50.5  # pydantic-core is a CPython 3.11 build: another Python there needs its own
ls bench/.wheels
