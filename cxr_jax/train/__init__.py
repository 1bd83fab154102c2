"""The shared training loop and per-method step functions."""
