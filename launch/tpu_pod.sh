#!/usr/bin/env bash
# The same command on every worker of a TPU VM pod slice; JAX finds the pod's hosts itself.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh train \
#       --config configs/classifier.py:paper --workdir gs://bucket/runs/classifier
# Assumes the repo is checked out at ~/cxr_jax on every worker with `pip install -e .` done
# (e.g. run once: launch/tpu_pod.sh --setup).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
if [[ "${1:-}" == "--setup" ]]; then
  REMOTE="cd ~/cxr_jax && pip install -e ."
else
  ARGS=$(printf '%q ' "$@")
  REMOTE="cd ~/cxr_jax && CXR_JAX_DISTRIBUTED=1 TF_CPP_MIN_LOG_LEVEL=2 python -m cxr_jax ${ARGS}"
fi
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$REMOTE"
