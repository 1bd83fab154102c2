r"""LD: unsupervised local discrimination (Chen et al., TPAMI 2023) on a VGG16-bn-tiny U-Net.

One run trains both stages: patch discrimination + mixup until `loss.stage1_steps`, then all four losses.
`batch_size` counts images; rows i and i + B/2 are the official code's image pair, so the paper's batch of
4 pairs is batch_size=8.

Variants:
  smoke:  seconds; a narrow network on 32 px phantom images (tests).
  demo:   the official network on 64 px phantom images, a few minutes on 2 CPU cores.
  cxr:    the images of ../shared/data (jsrt train; nih1000, openist) at 128 px, stage 1 only (750 steps);
          landmarks on jsrt valid from one jsrt train template, coarse to fine (`landmarks.*`, chosen on
          jsrt train). View 2 is not turned (`augment.turn_view2`): CXRs are upright.
  shape:  cxr plus shape-guided segmentation: cluster channel 0 against 5 unpaired jsrt train lung masks
          (an adversarial prior in stage 2), images and masks kept upright; evaluate adds its Dice on jsrt
          valid (`shape_dice_lungs`).
  paper:  the official setting: 448 px, batch 4 pairs, Adam 1e-3 halved every 10k steps, 20k + 80k steps.

Run:
  cxr-jax train --config configs/ld.py:demo --workdir workdirs/ld
  cxr-jax evaluate --config configs/ld.py:demo --workdir workdirs/ld
  cxr-jax landmarks --workdir workdirs/ld --template T.png --template-landmarks T.csv --out DIR IMAGES...
  cxr-jax bench --config configs/ld.py:paper
"""

import ml_collections

from configs import common


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """Returns the LD config for variant `arg` (smoke, demo, cxr, shape, paper)."""
    return common.apply_variant(_base(), VARIANTS, arg)


def _base() -> ml_collections.ConfigDict:
    """The keys and defaults every variant starts from."""
    c = common.base("ld")
    c.batch_size = 8
    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = 32  # D: the embedding head's channels (unit length per pixel).
    c.model.num_clusters = 16  # K: the clustering head's channels.
    c.model.layers = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128)
    c.model.widths = ((128, 64), (64, 32), (32, 16), ())  # Decoder convs per level; the last only concatenates.
    c.model.remat = False  # Recompute each conv block in the backward pass: less memory, ~25 % more FLOPs.

    c.loss = ml_collections.ConfigDict()
    c.loss.grid = 8  # Patches per side for patch discrimination and mixup (the official region_output_size).
    c.loss.temperature = 0.1  # Patch discrimination and mixup.
    c.loss.region_temperature = 0.2
    c.loss.patch, c.loss.mixup, c.loss.region, c.loss.entropy = 1.0, 1.0, 10.0, 0.1
    c.loss.stage1_steps = 50  # Region and entropy terms count from this step on.

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.halve_every = 10_000  # Steps (the official 10 epochs of 1000 iterations).

    c.landmarks = ml_collections.ConfigDict()  # One-shot localisation (`methods/ld/landmarks.py`), in model pixels.
    c.landmarks.sigma = 4.0  # Centre-sensitive averaging: the Gaussian's σ.
    c.landmarks.refine = 2  # Refine the best pixel to a centroid over a (2r + 1)² window; 0: plain argmax.
    c.landmarks.refine_temperature = 0.05  # Of the softmax over the window's cosine scores.
    # Priors for aligned radiographs (`methods/ld/landmarks.py`), all in model pixels; the defaults switch them off.
    c.landmarks.window = 0.0  # Match each point only within this radius of the template's position; 0: anywhere.
    c.landmarks.align = "none"  # none | similarity | affine: the answer is the template moved onto the matches.
    c.landmarks.align_keep = 0.5  # Fraction of matches each refit of the trimmed least squares keeps.
    c.landmarks.local_window = 0.0  # With align: search this radius around each moved point; 0: keep the moved one.
    c.landmarks.ncc_patch = 15  # Side of the raw-intensity patch the ncc baseline matches (odd).

    c.shape = ml_collections.ConfigDict()  # Shape-guided segmentation: an adversarial prior on cluster channel 0.
    c.shape.weight = 0.0  # λ of the network's adversarial loss in stage 2 (the official 1); 0: no prior.
    c.shape.structure = "lungs"  # Real masks are data.shape_masks' mask_<structure>; evaluate scores against it.
    c.shape.critic_channels = (16, 32, 32, 32, 32)  # One 2×2 pool each; ≥ 5 px must remain (448 px: 14).
    c.shape.critic_learning_rate = 0.05  # × the network's rate (the official critic's).
    c.shape.critic_slope = 0.2  # LeakyReLU slope; the official `nn.LeakyReLU(True)` is slope 1 (linear).
    c.shape.r1 = 0.0  # γ of the critic's R1 penalty on real masks (γ/2 · E‖∇D‖²); 0: none, as the official.
    # `shape_placed_dice_<structure>`: the prior's mean shape scaled (these factors) and shifted (±max_shift of the
    # side, shift_steps each way) to where it best fits channel 0 (`methods/ld/placement.py`).
    c.shape.place_scales = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)
    c.shape.place_max_shift = 0.1
    c.shape.place_shift_steps = 6

    # The official X-ray pre-training code's ranges (Chen et al. 2023); crops keep the input's size.
    c.augment = ml_collections.ConfigDict(dict(
        crop_area=(0.9, 1.0), base_degrees=180.0, flip_lr=0.5, flip_ud=0.5, view_degrees=2.0,
        brightness=(0.6, 1.4), contrast=(0.6, 1.4),  # ColorJitter(0.4, 0.4, …) in the training scripts.
        mixup=(0.2, 0.8),
        turn_view2=True))  # View 2's random 90°/180° turns: a turn-invariant embedding.
    c.data.extra_train = ml_collections.ConfigDict()  # More training sets (name → data spec), concatenated.
    c.data.train.num_examples = 512
    c.data.eval.num_examples = 64
    c.data.template = common.data_spec("phantom", "test")  # Its first image with landmarks is the template.
    c.data.template.num_examples = 1
    c.data.shape_masks = common.data_spec("phantom", "valid")  # The shape prior's handful of unpaired masks.
    c.data.shape_masks.num_examples = 5
    c.eval.best_metric, c.eval.best_mode = "landmark_mre_px", "min"  # One-shot landmarks' mean radial error.
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    common.smoke(c)
    c.model.update(embed_dim=8, num_clusters=4)
    c.model.layers = (4, "M", 8, "M", 8, "M", 8, "M", 8)
    c.model.widths = ((8, 8), (8, 8), (8, 4), ())
    c.loss.grid = 4
    c.loss.stage1_steps = 3
    c.landmarks.update(sigma=1.5, ncc_patch=5)
    c.shape.critic_channels = (4, 8)


def _demo(c: ml_collections.ConfigDict) -> None:
    c.train.num_steps = 600
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.eval.every = 100  # Measured on 2 CPU cores: an evaluation 5 s, 100 steps 125 s (+4 %).
    c.loss.stage1_steps = 200


def _cxr(c: ml_collections.ConfigDict) -> None:
    c.image_size = 128
    common.shared(c.data.train, "jsrt", "train")  # Queries (jsrt valid) stay unseen, even without labels.
    common.shared(c.data.eval, "jsrt", "valid")
    common.shared(c.data.template, "jsrt", "train")
    c.data.template.num_examples = 1
    for source in ("nih1000", "openist"):
        c.data.extra_train[source] = common.data_spec(source, "all")
        common.shared(c.data.extra_train[source], source)
    # Stage 1 only: its embedding localised best. Chosen on jsrt train queries (experiments/ld_landmarks.py,
    # README): step 750 before the region and entropy terms start at 800, better than 500 and than 1000.
    c.train.num_steps = 750
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.loss.stage1_steps = 800
    # CXRs are upright: turning view 2 made left and right lung borders alike (400 steps on jsrt valid:
    # 36 % of lung landmarks on the wrong side with turns, 15 % without; MRE 138.9 vs 84.9 px).
    c.augment.turn_view2 = False
    # Coarse to fine, chosen on jsrt train queries: matches within 24 model px of the template's points, the
    # template moved onto them by a trimmed affine fit, then each point searched within 2 px.
    c.landmarks.update(sigma=2.0, window=24.0, align="affine", local_window=2.0)


def _shape(c: ml_collections.ConfigDict) -> None:
    _cxr(c)
    c.train.num_steps = 2000  # Both stages: the prior acts on the clusters of stage 2.
    c.shape.weight = 1.0
    c.shape.critic_channels = (16, 32, 32, 32)  # 128 px → 8 → 4 after the unpadded convs.
    # Without R1 the critic won and channel 0 emptied for good (area 0.21 → 0.001 in 100 steps).
    c.shape.r1 = 10.0
    # The critic never sees the image: with any rotation and both flips on the masks, a lung pair
    # turned 90° was as real as an upright one, and channel 0 took apices + diaphragm (Dice 0.36 on jsrt
    # valid lungs at step 2000). Upright: 0.80 (the prior's mean mask, never seeing the image: 0.81).
    c.augment.update(base_degrees=10.0, flip_ud=0.0)
    common.shared(c.data.shape_masks, "jsrt", "train")
    c.data.shape_masks.num_examples = 5


def _paper(c: ml_collections.ConfigDict) -> None:
    c.image_size = 448
    c.landmarks.update(sigma=14.0, ncc_patch=53)  # The 128 px values, scaled.
    c.model.remat = True  # Less step memory at 448 px for ~25 % more FLOPs (README has the measured plan).
    c.train.num_steps = 100_000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.loss.stage1_steps = 20_000


VARIANTS = {"smoke": _smoke, "demo": _demo, "cxr": _cxr, "shape": _shape, "paper": _paper}
