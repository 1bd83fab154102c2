"""cxr_jax: JAX/Flax training system for chest X-ray DGM, ConVIRT and LD."""

__version__ = "0.1.0"

import os as _os

# Quiet TensorFlow (used only for tf.data) and keep its CPU kernels deterministic; before TF is imported.
# `cxr-jax --verbose` shows TensorFlow's warnings again unless the user chose a level.
TF_LOG_LEVEL_DEFAULTED = "TF_CPP_MIN_LOG_LEVEL" not in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
