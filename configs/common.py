"""Keys every method's config shares; each method's file adds its own and sets the variants."""

from collections.abc import Callable, Mapping

import ml_collections

from cxr_jax.config import ConfigError


def base(method: str) -> ml_collections.ConfigDict:
    """The common keys with the values of a short CPU run; variants override them."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.batch_size = 32  # Global, over all devices of all hosts.
    c.image_size = 64
    c.mixed_precision = False  # bf16 compute, fp32 params and optimizer state.
    c.init_from = None  # Another run's workdir whose latest params start this run.
    # Resume even though this config changes keys the run's checkpoints depend on (model, optimizer, data order;
    # cxr_jax/train/workdir.py FREE_KEYS lists the ones that may always change): the changes are logged.
    c.allow_changes = False

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 100
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 3
    c.train.cpu_ynn_fusions = False  # On CPU, XLA's own kernels; True hands ops to YNNPACK (slower here, parallel.py).

    c.data = ml_collections.ConfigDict()
    c.data.train = data_spec("phantom", "train")
    c.data.eval = data_spec("phantom", "valid")
    c.data.prefetch = 2

    # Evaluation inside the training process (`train/evaluation.py`): every `eval.every` steps the state is scored on
    # data.eval (W/eval/history.jsonl, TensorBoard eval/*), sample images are drawn (W/samples/STEP.png), and a
    # checkpoint is saved with the metrics; the step with the best `eval.best_metric` (one of the evaluator's
    # names; '' for none) is kept beside the latest train.keep_checkpoints. Each method's config names its metric.
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # Steps between evaluations; 0: off.
    c.eval.best_metric = ""
    c.eval.best_mode = "max"  # max | min: whether a larger best_metric is better.

    # Evaluators' 95 % AUC intervals (classifier `auc`, DGM `image_auc`): patients resampled with replacement
    # (images, where a source has no patient ids).
    c.bootstrap = ml_collections.ConfigDict(dict(num_resamples=2000, seed=0))

    c.bench = ml_collections.ConfigDict()
    c.bench.warmup_steps = 2
    c.bench.num_steps = 10
    return c


def data_spec(source: str, split: str) -> ml_collections.ConfigDict:
    """One data set: a source, its directory and split, and how to read it."""
    spec = ml_collections.ConfigDict()
    spec.source = source
    spec.path = None  # A directory in the source's layout; None for the phantom.
    spec.split = split
    spec.patient_split = False  # nih1000: split by a hash of patient_id instead of the CSV's split column.
    spec.num_examples = 0  # 0: all of the split (phantom: must be set).
    spec.sample_seed = -1  # With num_examples: -1 keeps the split's first rows; a seed ≥ 0 draws them at random.
    spec.uncertain = "zeros"  # CheXpert-style -1 labels: zeros | ones | ignore (kept as -1).
    spec.frontal_only = True  # Drop lateral views where a layout records the view.
    spec.on_error = "raise"  # A bad file or row: raise | skip (leave the example out, count, log).
    spec.stream = False  # Decode images in tf.data from their files instead of holding them.
    # A TFDS data dir where `cxr-jax data prepare SOURCE --path DIR --data-dir D` built this source: its split is read
    # from there (ArrayRecord, random access; the same arrays and input stream as from `path`). None: from `path`.
    spec.tfds_data_dir = None
    return spec


def smoke(c: ml_collections.ConfigDict) -> None:
    """The run shape every `smoke` variant shares: a few seconds on CPU, checkpoints and logs inside it."""
    c.batch_size = 8
    c.image_size = 32
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 6, 2, 3
    c.data.train.num_examples, c.data.eval.num_examples = 64, 32
    c.bench.num_steps = 3


def shared(spec: ml_collections.ConfigDict, source: str, split: str = "all") -> None:
    """Points `spec` at all of `split` of a set of ../shared/data (the path is relative to the project root).

    nih1000's shipped splits share patients (`sources.shared.load_nih1000`), so its splits are drawn by patient.
    """
    spec.source, spec.path, spec.split, spec.num_examples = source, f"../shared/data/{source}", split, 0
    spec.patient_split = source == "nih1000" and split != "all"


def apply_variant(c: ml_collections.ConfigDict, variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
                  arg: str) -> ml_collections.ConfigDict:
    """Applies `variants[arg]` to the base config `c`; an unknown `arg` is a ConfigError naming the choices."""
    if arg not in variants:
        names = list(variants)
        expected = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise ConfigError(f"unknown {c.method} variant {arg!r}; expected {expected}")
    variants[arg](c)
    return c
