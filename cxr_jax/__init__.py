"""cxr_jax: JAX/Flax training system for chest X-ray DGM, ConVIRT and LD."""

__version__ = "0.1.0"

import os as _os

# Quiet TensorFlow (used only for tf.data) and keep its CPU kernels deterministic; before TF is imported.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
