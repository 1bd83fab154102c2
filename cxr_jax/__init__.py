"""cxr_jax: JAX/Flax training system for chest X-ray DGM, ConVIRT and LD."""

__version__ = "0.1.0"
