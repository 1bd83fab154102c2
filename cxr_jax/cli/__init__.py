"""The `cxr-jax` command line: argument parsing and file input/output; nothing in the library imports it."""
