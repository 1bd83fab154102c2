"""Keys every method's config shares; each method's file adds its own and sets the variants."""

import ml_collections


def base(method: str) -> ml_collections.ConfigDict:
    """The common keys with the values of a short CPU run; variants override them."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.batch_size = 32  # Global, over all devices of all hosts.
    c.image_size = 64
    c.mixed_precision = False  # bf16 compute, fp32 params and optimizer state.
    c.init_from = None  # Another run's workdir whose latest params start this run.

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 100
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 3

    c.data = ml_collections.ConfigDict()
    for split, name in (("train", "train"), ("eval", "valid")):
        c.data[split] = ml_collections.ConfigDict()
        c.data[split].source = "phantom"
        c.data[split].path = None  # A directory in the source's layout; None for the phantom.
        c.data[split].split = name
        c.data[split].num_examples = 0  # 0: all of the split (phantom: must be set).
        c.data[split].uncertain = "zeros"  # CheXpert-style -1 labels: zeros | ones | ignore (kept as -1).
        c.data[split].frontal_only = True  # Drop lateral views where a layout records the view.
        c.data[split].on_error = "raise"  # A bad file or row: raise | skip (leave the example out, count, log).
        c.data[split].stream = False  # Decode images in tf.data from their files instead of holding them.
    c.data.prefetch = 2

    c.bench = ml_collections.ConfigDict()
    c.bench.warmup_steps = 2
    c.bench.num_steps = 10
    return c
