"""Pure flax.linen modules (no losses)."""
