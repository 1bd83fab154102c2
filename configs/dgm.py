r"""DGM: disentangled generative model, normal-image synthesis and disease residue (Tang et al., MedIA 2021).

Variants:
  smoke:   seconds; a tiny generator and a 2-scale discriminator on 32 px phantom images (tests).
  demo:    minutes on 2 CPU cores; a narrow MUNIT-shaped model on 64 px phantom images.
  nih1000: the demo model on ../shared/data/nih1000 (normal vs abnormal, 64 px).
  jsrt:    the demo model on ../shared/data/jsrt at 128 px (nodule vs normal; 62 images).
  paper:   MUNIT's defaults (dim 64, 2 down-samplings, 4 residual blocks, MLP 256; discriminator 64→512,
           3 scales) at 256 px, λ_A = λ_R = 10, λ_TV = 1, Adam 1e-4 (0.5, 0.999), L2 1e-4, the rate
           halved every 100k steps. The paper does not state a batch size; 8 is this config's choice.

Run:
  cxr-jax train --config configs/dgm.py:demo --workdir workdirs/dgm
  cxr-jax bench --config configs/dgm.py:paper --config.image_size=128
"""

import ml_collections

from configs import common


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """Returns the DGM config for variant `arg` (smoke, demo, nih1000, jsrt, paper)."""
    return common.apply_variant(_base(), VARIANTS, arg)


def _base() -> ml_collections.ConfigDict:
    """The keys and defaults every variant starts from."""
    c = common.base("dgm")
    c.batch_size = 8
    c.model = ml_collections.ConfigDict()
    c.model.generator = ml_collections.ConfigDict(dict(
        dim=64,  # Channels after the first conv; doubled by each down-sampling.
        n_down=2,  # conv4/stride-2 layers in each encoder (and ×2 up-samplings in each decoder).
        n_res=4,  # Residual blocks in each encoder and decoder.
        mlp_dim=256,  # Width of D_J's MLP from pooled c_s to the AdaIN parameters.
        residue_res_norm="none",  # D_F's residual blocks: none (like E_F, keeps the residue's scale) | in.
        remat=False,  # Recompute each block in the backward pass: less memory for ~25 % more FLOPs (README).
    ))
    c.model.discriminator = ml_collections.ConfigDict(dict(dim=64, n_layers=4, num_scales=3))
    c.model.discriminator.init_std = 0.02  # Weights ~ N(0, init_std): MUNIT's choice (the paper is silent).
    # σ (pixels) of a Gaussian blur on every image D sees, real and fake; 0: none (the paper). docs/dgm.md: D
    # otherwise learns to tell y′ by its blur alone.
    c.model.discriminator.input_blur = 0.0
    # The anomaly baseline trained beside DGM on the same batches' normals (its metrics are `ae_…`).
    c.model.ae = ml_collections.ConfigDict(dict(enabled=True, dim=32, n_down=3, latent=128))

    c.loss = ml_collections.ConfigDict(dict(adversarial=10.0, reconstruction=10.0, tv=1.0))  # λ_A, λ_R, λ_TV.
    # Whose y′ are fakes: all (the paper's wording) | abnormal (a normal input's y′ is meant to equal z, so
    # calling it fake asks D to tell z from its reconstruction rather than a lesion from a normal lung).
    c.loss.fakes = "all"
    c.loss.residue_normal_scale = 1.0  # ℓ_R³'s weight is λ_R × this (the paper: 1; other values for ablations).

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-4
    c.optim.beta1 = 0.5
    c.optim.beta2 = 0.999
    c.optim.weight_decay = 1e-4  # PyTorch-style L2 (added to the gradient), as MUNIT.
    c.optim.decay_every = 0  # Halve the rate every this many steps (MUNIT's step policy); 0: constant rate.
    c.optim.decay_rate = 0.5
    c.optim.d_lr_scale = 1.0  # The discriminator's rate is the generator's × this (MUNIT and the paper: 1).
    c.optim.ema_decay = 0.0  # Generator EMA kept in the state and used for inference; 0: none.

    c.augment = ml_collections.ConfigDict()
    c.augment.max_shift = 2  # Pixels of random translation (no flips: they move the heart).

    c.saliency = ml_collections.ConfigDict()  # Residue → salient regions (cxr_jax/methods/dgm/saliency.py).
    c.saliency.threshold = "otsu"  # otsu | percentile, computed over the pixels inside the lung boxes.
    c.saliency.percentile = 95.0  # For threshold=percentile.
    c.saliency.source = "residue"  # residue: r = D_F(E_F(z)), the paper's | difference: z − y′.
    c.saliency.polarity = "abs"  # abs | positive (added intensity, e.g. opacities) | negative.
    c.saliency.smooth_sigma = 0.0  # Gaussian smoothing of the map before scoring, in model pixels; 0: none.
    c.saliency.pointing_margin = 10 / 512  # `pointing_accuracy`: hits within the lesion radius + this × size.
    c.saliency.min_area = 4  # Components with fewer pixels are dropped.
    c.saliency.image_top_fraction = 0.05  # An image's score: the mean of its top 5 % pixel scores in the lungs.
    c.saliency.lung_segmenter = None  # A segment run (configs/segment.py:lungs) for sets without lung masks.

    c.data.normal_fraction = 0.5  # Normal images in every training batch (the discriminator's reals).
    c.data.extra_train = ml_collections.ConfigDict()  # More training sets (name → data spec), concatenated.
    c.data.train.num_examples = 1024
    c.data.eval.num_examples = 256
    c.eval.best_metric, c.eval.best_mode = "image_auc", "max"  # The residue's normal vs abnormal AUC.
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    common.smoke(c)
    c.model.generator.update(dim=4, n_res=1, mlp_dim=8)
    c.model.discriminator.update(dim=8, n_layers=3, num_scales=2)
    c.model.ae.update(dim=4, n_down=2, latent=8)


def _demo(c: ml_collections.ConfigDict) -> None:
    _demo_model(c)
    # Evaluated at every checkpoint: 256 images took 29 s against 250 steps' 410 s on 2 CPU cores (+7 %).
    c.eval.every = c.train.checkpoint_every


def _demo_model(c: ml_collections.ConfigDict) -> None:
    """The demo's model and schedule (also nih1000's and jsrt's, whose evaluation cost is not measured)."""
    c.model.generator.update(dim=16, n_res=2, mlp_dim=64)
    c.model.discriminator.update(dim=16)
    c.optim.learning_rate = 2e-4
    c.optim.ema_decay = 0.99
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.checkpoint_every = 250


def _nih1000(c: ml_collections.ConfigDict) -> None:
    _demo_model(c)
    common.shared(c.data.train, "nih1000", "train")
    common.shared(c.data.eval, "nih1000", "valid")


def _jsrt(c: ml_collections.ConfigDict) -> None:
    _demo_model(c)
    c.image_size = 128
    c.augment.max_shift = 4
    c.model.ae.n_down = 4
    common.shared(c.data.train, "jsrt", "train")
    common.shared(c.data.eval, "jsrt", "valid")


def _paper(c: ml_collections.ConfigDict) -> None:
    c.image_size = 256
    c.model.ae.update(dim=64, n_down=5, latent=256)
    c.optim.decay_every = 100_000
    c.train.num_steps = 300_000
    c.train.log_every = 100
    c.train.checkpoint_every = 5000
    common.shared(c.data.train, "nih1000", "train")
    common.shared(c.data.eval, "nih1000", "valid")


VARIANTS = {"smoke": _smoke, "demo": _demo, "nih1000": _nih1000, "jsrt": _jsrt, "paper": _paper}
