"""Run by test_method under `tests.no_tensorflow`: METHOD… built from `smoke`, initialised and stepped.

Each method's state and step are jitted as the loop does (`loop.jitted`) for its `synthetic_batch`; `--trace`
only traces the step (fast: the Python path without compiling), else one step runs. Prints JSON
{method: loss (or null when traced), …} and the TensorFlow-like modules that were imported.
"""

import json
import sys

import jax
import numpy as np

from cxr_jax import config as config_lib
from cxr_jax import parallel, registry
from cxr_jax.train import loop


def main(names, trace):
    mesh = parallel.make_mesh(jax.devices()[:1])
    out = {}
    for name in names:
        config = config_lib.method_config(name, "smoke")
        method = registry.build(config, mesh)
        batch = parallel.from_full(method.synthetic_batch(config.batch_size, config.seed), mesh)
        init_fn, step_fn, abstract = loop.jitted(config, method, mesh, batch)
        if trace:
            jax.eval_shape(step_fn, abstract, batch)
            out[name] = None
            continue
        state, metrics = step_fn(init_fn(jax.random.key(0), batch), batch)
        out[name] = float(np.asarray(metrics[method.key_metrics[0]]))
    tf_like = sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "tensorflow_datasets", "keras"))
    print(json.dumps({"results": out, "tf_modules": tf_like}))


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if not a.startswith("--")], "--trace" in args)
