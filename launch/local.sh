#!/usr/bin/env bash
# One process on this machine, all its devices. Example:
#   launch/local.sh train --config configs/classifier.py:demo --workdir workdirs/classifier
# Simulate N CPU devices: CXR_JAX_CPU_DEVICES=8 launch/local.sh train ...
set -euo pipefail
if [[ -n "${CXR_JAX_CPU_DEVICES:-}" ]]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${CXR_JAX_CPU_DEVICES} ${XLA_FLAGS:-}"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python -m cxr_jax "$@"
