#!/usr/bin/env bash
# Launch AceGRPO on a TPU pod slice: the same command on every host of the slice
# (gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd ace-jax && scripts/launch_tpu_pod.sh").
# jax.distributed.initialize() picks up the slice's coordinates (mesh presets with
# `distributed: auto`); each host runs its share of the sharded update.
set -euo pipefail
cd "$(dirname "$0")/.."
MESH=${MESH:-v5p-64}
HF=${HF:?set HF=/path/to/Qwen3-30B-A3B (on every host or a shared disk)}
exec .venv/bin/ace-jax train --config configs/experiments/qwen3-30b-a3b-code.yaml \
  model.hf="$HF" mesh="$MESH" rollout.engine=jax "$@"
