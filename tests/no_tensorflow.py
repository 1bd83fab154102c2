"""`python -m tests.no_tensorflow MODULE ARG…`: runs MODULE as `__main__` where TensorFlow cannot be imported.

Imports of tensorflow, tensorflow_datasets and tensorboardX fail as on a machine without them (an accelerator's
image), from before anything else is imported: whatever reaches for them at import time, or on the way to a
train step, fails the test that runs this.
"""

import importlib.abc
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboardX")


class Blocker(importlib.abc.MetaPathFinder):
    """Finds the blocked packages' modules as missing."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests.no_tensorflow)", name=name)
        return None


if __name__ == "__main__":
    loaded = [m for m in sys.modules if m.partition(".")[0] in BLOCKED]
    assert not loaded, loaded
    sys.meta_path.insert(0, Blocker())
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
