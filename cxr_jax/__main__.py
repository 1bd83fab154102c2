"""`python -m cxr_jax` is the `cxr-jax` command."""

from cxr_jax.cli.main import entry_point

entry_point()
