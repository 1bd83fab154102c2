"""Orbax checkpoints of the train state plus a JSON record of the input position.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed at any
moment leaves only whole checkpoints behind; `latest_step` never sees a partial one.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def resolve(self, which: str | int) -> int:
        """The step of checkpoint `which`: 'latest' or a step number (as int or digits)."""
        steps = self._manager.all_steps()
        if which == "latest":
            if not steps:
                raise FileNotFoundError(f"no checkpoint under {self.directory}; train first")
            return max(steps)
        if isinstance(which, int) or str(which).isdigit():
            if int(which) not in steps:
                raise FileNotFoundError(f"no checkpoint of step {which} under {self.directory}; there are "
                                        f"{sorted(steps) or 'none'}")
            return int(which)
        raise ValueError(f"checkpoint {which!r}: expected 'latest' or a step number")

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves asynchronously; the arrays are copied off the devices before this returns."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {self.directory / str(step)} does not match this config's model "
                             f"and optimizer: {e}") from e
        return restored.state, restored.meta

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()


def abstract_like(tree: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or structs) placed with `sharding` (one for all leaves)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
