"""The training state: arrays only, so it can be sharded, donated and checkpointed as one pytree.

`params` and `opt_state` are dicts keyed by optimizer name ('model' for one network; 'g' and 'd' for a GAN),
so several optimizers live in one state. The optimizers themselves (optax transformations) belong to the
method object, not the state.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cxr_jax.config import ConfigError


@flax.struct.dataclass
class TrainState:
    """Step counter, parameters and optimizer state per optimizer name, and non-trained model variables."""

    step: jax.Array
    params: dict[str, Any]
    opt_state: dict[str, Any]
    model_state: dict[str, Any]  # e.g. BatchNorm statistics, EMA weights.

    @classmethod
    def create(cls, params: dict[str, Any], tx: dict[str, optax.GradientTransformation],
               model_state: dict[str, Any] | None = None) -> TrainState:
        """A state at step 0 with fresh optimizer state for each entry of `params`."""
        if set(params) != set(tx):
            raise ValueError(f"params {sorted(params)} and optimizers {sorted(tx)} must have the same names")
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   opt_state={k: tx[k].init(params[k]) for k in params}, model_state=model_state or {})

    def apply_gradients(self, name: str, grads, tx: optax.GradientTransformation) -> TrainState:
        """Updates `params[name]` with optimizer `tx` (does not advance `step`)."""
        updates, opt_state = tx.update(grads, self.opt_state[name], self.params[name])
        params = optax.apply_updates(self.params[name], updates)
        return self.replace(params={**self.params, name: params}, opt_state={**self.opt_state, name: opt_state})


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The step's PRNG key: the run's seed folded with the step, identical on every host."""
    return jax.random.fold_in(jax.random.key(seed), step)


def norms(params, grads) -> dict[str, jax.Array]:
    """Global L2 norms of parameters and gradients, logged every step."""
    return {"param_norm": optax.global_norm(params), "grad_norm": optax.global_norm(grads)}


def warmup_cosine(optim, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over `optim.warmup_steps` to `optim.learning_rate`, then cosine decay to 0.

    A warm-up as long as the run is a ConfigError here, not optax's traceback at the first step.
    """
    if not 0 <= optim.warmup_steps < num_steps:
        raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} must be below train.num_steps={num_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, optim.warmup_steps, num_steps)
