r"""Normal/abnormal CXR classifier (ResNet): proves the training loop; DGM's downstream baseline.

Variants:
  smoke:   seconds, tiny ResNet on 32 px phantom images (tests).
  demo:    a few minutes on 2 CPU cores, ResNet-10 on 64 px phantom images.
  nih1000: the demo model on ../shared/data/nih1000 (real NIH images, 64 px).
  paper:   ResNet-50 at 224 px, Adam 1e-4, batch 32 (CheXNet-style baseline setting; needs a real set).

Run:
  cxr-jax train --config configs/classifier.py:demo --workdir workdirs/classifier
  cxr-jax evaluate --config configs/classifier.py:demo --workdir workdirs/classifier
DGM downstream (nih1000; DGM run from `configs/dgm.py:nih1000`), with the residue as a feature or transplanted:
  cxr-jax train --config configs/classifier.py:nih1000 --workdir W --config.model.residue_from=DGM_RUN \
      --config.model.residue_features=True
  cxr-jax train --config configs/classifier.py:nih1000 --workdir W --config.model.residue_from=DGM_RUN \
      --config.augment.transplant=0.3
"""

import ml_collections

from configs import common


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """Returns the classifier config for variant `arg` (smoke, demo, nih1000, paper)."""
    return common.apply_variant(_base(), VARIANTS, arg)


def _base() -> ml_collections.ConfigDict:
    """The keys and defaults every variant starts from."""
    c = common.base("classifier")
    c.model = ml_collections.ConfigDict()
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.block = "basic"  # basic | bottleneck (torchvision layout).
    c.model.width = 32
    c.model.num_classes = 1  # One logit: abnormal.
    c.model.residue_from = None  # A DGM run (same image_size) whose residues the options below use.
    c.model.residue_features = False  # The residue as a second input channel.

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 1e-4  # Decoupled (AdamW).

    c.augment = ml_collections.ConfigDict()
    c.augment.max_shift = 4  # Pixels of random translation (zero padding).
    c.augment.contrast = 0.2  # Contrast factor drawn from [1 - x, 1 + x].
    c.augment.transplant = 0.0  # Probability that a normal image gets an abnormal one's residue (label 1).

    c.data.train.num_examples = 1024
    c.data.eval.num_examples = 256
    c.eval.best_metric, c.eval.best_mode = "auc", "max"
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    common.smoke(c)
    c.model.width = 8
    c.optim.warmup_steps = 2


def _demo(c: ml_collections.ConfigDict) -> None:
    c.train.num_steps = 300
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    c.eval.every = 100  # Measured on 2 CPU cores: an evaluation 1.3 s, 100 steps 34 s (+4 %).


def _nih1000(c: ml_collections.ConfigDict) -> None:
    common.shared(c.data.train, "nih1000", "train")
    common.shared(c.data.eval, "nih1000", "valid")
    c.train.num_steps = 600
    c.train.log_every = 20
    c.train.checkpoint_every = 200


def _paper(c: ml_collections.ConfigDict) -> None:
    c.image_size = 224
    c.model.stage_sizes = (3, 4, 6, 3)
    c.model.block = "bottleneck"
    c.model.width = 64
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 500
    common.shared(c.data.train, "nih1000", "train")
    common.shared(c.data.eval, "nih1000", "valid")
    c.train.num_steps = 20000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000


VARIANTS = {"smoke": _smoke, "demo": _demo, "nih1000": _nih1000, "paper": _paper}
