"""Config files, one per method: `get_config(variant)`."""
