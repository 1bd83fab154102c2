"""`python -m cxr_jax` is the `cxr-jax` command."""

import sys

from cxr_jax.main import main

sys.exit(main())
