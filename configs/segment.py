r"""Structure segmentation with a VGG16-bn-tiny U-Net: the lung segmenter DGM uses when a set has no masks.

Variants:
  smoke:  seconds; a narrow U-Net on 32 px phantom lungs (tests).
  lungs:  both lungs as one structure at 128 px, trained on ../shared/data/openist (train split) and jsrt
          (train split), evaluated on jsrt's valid split. A few minutes on 2 CPU cores.
  jsrt:   lungs, heart and clavicles on jsrt at 128 px.
  ld_transfer: LD's transfer target: left/right lung, heart and clavicles on jsrt at 128 px, soft Dice,
          the encoder frozen for 200 steps then fine-tuned. With --config.model.encoder_from=LD_RUN it starts
          from LD's encoder, without it from random weights; --config.data.train.num_examples=1 or 5 for the
          few-shot settings.

Run:
  cxr-jax train --config configs/segment.py:lungs --workdir workdirs/lungs
  cxr-jax evaluate --config configs/segment.py:lungs --workdir workdirs/lungs
  cxr-jax segment --workdir workdirs/lungs IMAGES... --out DIR
"""

import ml_collections

from configs import common


def get_config(arg: str = "lungs") -> ml_collections.ConfigDict:
    """Returns the segmentation config for variant `arg` (smoke, lungs, jsrt, ld_transfer)."""
    return common.apply_variant(_base(), VARIANTS, arg)


def _base() -> ml_collections.ConfigDict:
    """The keys and defaults every variant starts from."""
    c = common.base("segment")
    c.batch_size = 16
    c.image_size = 128
    c.model = ml_collections.ConfigDict()
    c.model.structures = ("lungs",)  # One sigmoid channel each, read from the examples' mask_<structure>.
    c.model.layers = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128)
    c.model.widths = ((128, 64), (64, 32), (32, 16), (16, 16))  # Decoder convs per level, coarsest first.
    c.model.encoder_from = None  # An LD run whose encoder starts this one (same model.layers); None: random.

    c.loss = ml_collections.ConfigDict()
    c.loss.bce = 1.0  # Weight of the per-pixel BCE added to (1 − soft Dice).

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3  # Cosine-decayed to 0 over train.num_steps.
    c.optim.weight_decay = 1e-4  # Decoupled (AdamW).
    c.optim.freeze_encoder_steps = 0  # The encoder stays as loaded for this many steps, then is fine-tuned.

    c.augment = ml_collections.ConfigDict()  # One random affine for image and masks together.
    c.augment.degrees = 10.0
    c.augment.translate = 0.05  # Fraction of the image size.
    c.augment.scale = (0.9, 1.1)
    c.augment.contrast = 0.2  # Contrast factor drawn from [1 - x, 1 + x].

    c.data.extra_train = ml_collections.ConfigDict()  # More training sets (name → data spec), concatenated.
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.eval.best_metric, c.eval.best_mode = "dice_mean", "max"  # Mean Dice over model.structures.
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    common.smoke(c)
    c.model.layers = (4, "M", 8, "M", 8, "M", 8, "M", 8)
    c.model.widths = ((8, 8), (8, 8), (8, 4), (4, 4))


def _lungs(c: ml_collections.ConfigDict) -> None:
    common.shared(c.data.train, "openist", "train")
    c.data.extra_train.jsrt = common.data_spec("jsrt", "train")
    common.shared(c.data.extra_train.jsrt, "jsrt", "train")
    common.shared(c.data.eval, "jsrt", "valid")


def _jsrt(c: ml_collections.ConfigDict) -> None:
    c.model.structures = ("lungs", "heart", "clavicles")
    common.shared(c.data.train, "jsrt", "train")
    common.shared(c.data.eval, "jsrt", "valid")


def _ld_transfer(c: ml_collections.ConfigDict) -> None:
    c.model.structures = ("left_lung", "right_lung", "heart", "clavicles")
    c.optim.freeze_encoder_steps = 200
    c.loss.bce = 0.0  # Soft Dice only, as LD's transfer experiments.
    common.shared(c.data.train, "jsrt", "train")
    common.shared(c.data.eval, "jsrt", "valid")


VARIANTS = {"smoke": _smoke, "lungs": _lungs, "jsrt": _jsrt, "ld_transfer": _ld_transfer}
