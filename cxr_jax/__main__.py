"""`python -m cxr_jax` is the `cxr-jax` command."""

from cxr_jax.main import entry_point

entry_point()
