"""Loss functions: pure, keyword-only, float32 inside, one module per method."""
