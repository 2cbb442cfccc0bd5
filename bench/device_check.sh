#!/usr/bin/env bash
# GPU check for a lent machine (one H200, JAX preinstalled with flax / optax / transformers; nothing
# downloadable there): the MoE layer fwd+bwd per backend (and per grouped-matmul impl: tokamax's
# Mosaic GPU and Triton kernels, XLA) at the 30B layer shape in TFLOP/s against the chip's peak,
# and one small-MoE GRPO train step. Uses the project from this working tree via PYTHONPATH; stops
# itself after 8 minutes. Writes the table to ${OUT:-.}/device_check.md.
#   bash bench/fetch_gpu_wheels.sh   # here, once: tokamax and its pure-Python deps into bench/.wheels
#   bash bench/device_check.sh       # there, with bench/.wheels carried along (run: carry=["bench/.wheels"])
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
out="${OUT:-.}"
if ls bench/.wheels/*.whl >/dev/null 2>&1; then
  # Into a side folder, without dependency resolution: the machine's own jax / flax stay untouched.
  python -m pip install -q --no-index --no-deps --target /tmp/gpu-wheels bench/.wheels/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/gpu-wheels"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"
python -c "import tokamax; print('tokamax', tokamax.__version__)" || echo "tokamax: not importable (gmm[tokamax-*] rows fall back or fail)"
timeout 480 python bench/device_check.py --out "$out/device_check.md" 2>&1 | tee "$out/device_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "device_check: stopped at the 8-minute limit"
exit "$rc"
