"""Per-example tf.data ops and each method's augmentation, as small composable functions.

Random ops are stateless, seeded by the example's `seed` ([2] int64), so an example's augmentation depends on
(run seed, global position) only. Images are float32 [H, W, C]; the photometric ops assume [0, 1]
(`to_unit`), the classifier's older ops work in [-1, 1] (`to_float`). Every random op draws its parameters
and calls a deterministic op that tests check against closed forms.
"""

from __future__ import annotations

import math

import ml_collections
import tensorflow as tf


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def float_image(example: dict) -> dict:
    """An eval example with its image as [-1, 1] floats and nothing else changed (no augmentation)."""
    return {**example, "image": to_float(example["image"])}


def to_unit(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """`num` independent seeds [num, 2] from one."""
    return tf.random.experimental.stateless_split(seed, num)


def _uniform(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, low, high)


def _coin(seed: tf.Tensor, p: float = 0.5) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < p


# Geometry.


def random_shift(image: tf.Tensor, seed: tf.Tensor, max_shift: int, fill: float | None = None) -> tf.Tensor:
    """Translates by up to `max_shift` pixels in each direction, filling with `fill` (default: the image minimum).

    The offset depends on `seed` only, so tensors shifted with one seed move together.
    """
    if max_shift == 0:
        return image
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    low = tf.reduce_min(image) if fill is None else tf.constant(fill, image.dtype)
    padded = tf.pad(image - low, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]]) + low
    offset = tf.random.stateless_uniform([2], seed, 0, 2 * max_shift + 1, dtype=tf.int32)
    return tf.slice(padded, [offset[0], offset[1], 0], [h, w, tf.shape(image)[2]])


def random_flip(image: tf.Tensor, seed: tf.Tensor, *, axis: int, p: float = 0.5) -> tf.Tensor:
    """Flips along `axis` (1: left–right, 0: up–down) with probability `p`."""
    return tf.cond(_coin(seed, p), lambda: tf.reverse(image, [axis]), lambda: image)


def crop_box(shape: tf.Tensor, seed: tf.Tensor, *, area: tuple[float, float],
             aspect: tuple[float, float], tries: int = 10) -> tf.Tensor:
    """A random crop [y0, x0, h, w] covering `area` of the image with aspect ratio w/h in `aspect`.

    torchvision's RandomResizedCrop draw, vectorised: `tries` (area ~ U, log aspect ~ U) pairs, the first that
    fits wins (at a uniform offset), else the centred largest crop of clamped aspect.
    """
    draw_seed, offset_seed = tf.unstack(split_seed(seed, 2))
    h_img, w_img = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    draws = tf.random.stateless_uniform([2, tries], draw_seed)
    target = (area[0] + (area[1] - area[0]) * draws[0]) * h_img * w_img
    ratio = tf.exp(math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * draws[1])
    w, h = tf.round(tf.sqrt(target * ratio)), tf.round(tf.sqrt(target / ratio))
    fits = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
    first = tf.argmax(tf.cast(fits, tf.int32))
    image_ratio = w_img / h_img
    fallback_w = tf.where(image_ratio < aspect[0], w_img, tf.where(image_ratio > aspect[1], tf.round(
        h_img * aspect[1]), w_img))
    fallback_h = tf.where(image_ratio < aspect[0], tf.round(w_img / aspect[0]), h_img)
    found = tf.reduce_any(fits)
    h = tf.cast(tf.where(found, h[first], fallback_h), tf.int32)
    w = tf.cast(tf.where(found, w[first], fallback_w), tf.int32)
    offset = tf.where(found, tf.random.stateless_uniform([2], offset_seed), 0.5)  # The fallback is centred.
    y0 = tf.minimum(tf.cast(offset[0] * tf.cast(shape[0] - h + 1, tf.float32), tf.int32), shape[0] - h)
    x0 = tf.minimum(tf.cast(offset[1] * tf.cast(shape[1] - w + 1, tf.float32), tf.int32), shape[1] - w)
    return tf.stack([y0, x0, h, w])


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, *, size: int, area: tuple[float, float],
                        aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """A random crop (`crop_box`) resized (bilinear) to `size` × `size`."""
    box = crop_box(tf.shape(image), seed, area=area, aspect=aspect)
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
    return tf.image.resize(crop, [size, size], method="bilinear")


def affine(image: tf.Tensor, *, angle: tf.Tensor, translate: tf.Tensor, scale: tf.Tensor,
           fill: float = 0.0) -> tf.Tensor:
    """Rotates and scales about the centre, then translates (torchvision's RandomAffine geometry).

    `angle` is in degrees, counter-clockwise as displayed; `translate` = (dx, dy) pixels; bilinear sampling
    with `fill` outside the image.
    """
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    theta = tf.cast(angle, tf.float32) * math.pi / 180.0
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    tx, ty = cx + tf.cast(translate[0], tf.float32), cy + tf.cast(translate[1], tf.float32)
    # Output pixel p' comes from input p = C + R(-angle) (p' - C - t) / scale, with y pointing down.
    matrix = tf.stack([cos, -sin, cx - cos * tx + sin * ty, sin, cos, cy - sin * tx - cos * ty, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=matrix[None], output_shape=tf.shape(image)[:2],
        fill_value=fill, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def random_affine(image: tf.Tensor, seed: tf.Tensor, *, degrees: float, translate: float,
                  scale: tuple[float, float], fill: float = 0.0) -> tf.Tensor:
    """`affine` with angle ~ U(±degrees), shift ~ U(±translate · size) rounded, scale ~ U(scale)."""
    angle_seed, shift_seed, scale_seed = tf.unstack(split_seed(seed, 3))
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    shift = tf.round(tf.random.stateless_uniform([2], shift_seed, -translate, translate) * hw[::-1])
    return affine(image, angle=_uniform(angle_seed, -degrees, degrees), translate=shift,
                  scale=_uniform(scale_seed, *scale), fill=fill)


def rot_flip(image: tf.Tensor, *, k: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Rotates by 180° if `flip`, then by k·90° counter-clockwise (LD's second view; works on any [H, W, C])."""
    image = tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(image, [0, 1]), lambda: image)
    return tf.image.rot90(image, k)


def undo_rot_flip(image: tf.Tensor, *, k: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """The inverse of `rot_flip` (e.g. on a patch-feature grid, so positives line up)."""
    image = tf.image.rot90(image, -k)
    return tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(image, [0, 1]), lambda: image)


# Photometry (images in [0, 1]).


def transplant_residue(image: tf.Tensor, residue: tf.Tensor, *, weight: float | tf.Tensor = 1.0) -> tf.Tensor:
    """A synthetic abnormal image: a DGM residue r (from an abnormal image) added to a normal image, clipped.

    DGM decomposes z = y′ + r with y′ a normal image and r the disease, so y + w·r places that disease on
    another normal image y (both [H, W, 1] in [-1, 1], from the same image size and framing).
    """
    return tf.clip_by_value(image + tf.cast(weight, image.dtype) * residue, -1.0, 1.0)


def random_contrast(image: tf.Tensor, seed: tf.Tensor, amount: float) -> tf.Tensor:
    """Scales deviations from the image mean by a factor drawn from [1 - amount, 1 + amount] (no clipping)."""
    if amount == 0:
        return image
    factor = tf.random.stateless_uniform([], seed, 1.0 - amount, 1.0 + amount)
    mean = tf.reduce_mean(image)
    return (image - mean) * factor + mean


def brightness_contrast(image: tf.Tensor, *, brightness: tf.Tensor, contrast: tf.Tensor) -> tf.Tensor:
    """Torchvision's adjust_brightness then adjust_contrast on a [0, 1] grayscale image (clipped each time)."""
    image = tf.clip_by_value(image * brightness, 0.0, 1.0)
    mean = tf.reduce_mean(image)
    return tf.clip_by_value((image - mean) * contrast + mean, 0.0, 1.0)


def random_brightness_contrast(image: tf.Tensor, seed: tf.Tensor, *, brightness: tuple[float, float],
                               contrast: tuple[float, float]) -> tf.Tensor:
    """`brightness_contrast` with factors ~ U(brightness) and U(contrast)."""
    b_seed, c_seed = tf.unstack(split_seed(seed, 2))
    return brightness_contrast(image, brightness=_uniform(b_seed, *brightness),
                               contrast=_uniform(c_seed, *contrast))


def gaussian_blur(image: tf.Tensor, *, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur with a (2·radius + 1)-tap kernel, reflecting at the borders."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel /= tf.reduce_sum(kernel)
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    channels = tf.shape(image)[2]
    out = tf.transpose(padded, [2, 0, 1])[..., None]  # Channels as a batch of 1-channel images.
    out = tf.nn.conv2d(out, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "VALID")
    out = tf.nn.conv2d(out, tf.reshape(kernel, [1, -1, 1, 1]), 1, "VALID")
    return tf.reshape(tf.transpose(out[..., 0], [1, 2, 0]), [tf.shape(image)[0], tf.shape(image)[1], channels])


def random_gaussian_blur(image: tf.Tensor, seed: tf.Tensor, *, sigma: tuple[float, float]) -> tf.Tensor:
    """`gaussian_blur` with σ ~ U(sigma); the kernel reaches 3σ of the largest σ."""
    return gaussian_blur(image, sigma=_uniform(seed, *sigma), radius=math.ceil(3 * sigma[1]))


# Each method's augmentation (ranges in the method's config; the papers' are in configs/convirt.py and ld.py).


def convirt_view(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """ConVIRT's image view: crop, horizontal flip, affine, brightness/contrast, blur; [0, 1] in and out.

    The blur's σ range is given for `cfg.blur_reference_size`-pixel images (the paper's 224) and scaled to
    this image, so a 64-px run blurs the same anatomy as the paper does.
    """
    s = tf.unstack(split_seed(seed, 5))
    size = image.shape[0]
    image = random_resized_crop(image, s[0], size=size, area=tuple(cfg.crop_area))
    image = random_flip(image, s[1], axis=1, p=cfg.flip)
    image = random_affine(image, s[2], degrees=cfg.degrees, translate=cfg.translate, scale=tuple(cfg.scale))
    image = random_brightness_contrast(image, s[3], brightness=tuple(cfg.brightness),
                                       contrast=tuple(cfg.contrast))
    return random_gaussian_blur(image, s[4], sigma=tuple(sigma * size / cfg.blur_reference_size
                                                         for sigma in cfg.blur_sigma))


def ld_base(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """LD's augmentation shared by an image's two views: flips, a rotation, a mild resized crop.

    The official flips both ways and rotates by up to 180°; `cfg.flip_ud` = 0 and a small `cfg.base_degrees`
    keep images upright.
    """
    s = tf.unstack(split_seed(seed, 4))
    image = random_flip(image, s[0], axis=1, p=cfg.flip_lr)
    image = random_flip(image, s[1], axis=0, p=cfg.flip_ud)
    image = random_affine(image, s[2], degrees=cfg.base_degrees, translate=0.0, scale=(1.0, 1.0))
    return random_resized_crop(image, s[3], size=image.shape[0], area=tuple(cfg.crop_area))


def ld_jitter(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> tf.Tensor:
    """LD's independent per-view jitter: a small rotation and brightness/contrast."""
    s = tf.unstack(split_seed(seed, 2))
    image = random_affine(image, s[0], degrees=cfg.view_degrees, translate=0.0, scale=(1.0, 1.0))
    return random_brightness_contrast(image, s[1], brightness=tuple(cfg.brightness), contrast=tuple(cfg.contrast))


def ld_views(image: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
    """LD's two views of a [0, 1] image: one base augmentation, independent jitter, view 2 turned.

    View 2 is rotated by 180° (`flip`) and then k·90° (`rot_flip`); the step undoes that on its patch grid.
    With `cfg.turn_view2` False, k = flip = 0: the embedding need not be invariant to turns (upright images).
    `mix` ~ U(cfg.mixup) is the image's weight if it is the first of a mixup pair.
    """
    s = tf.unstack(split_seed(seed, 6))
    base = ld_base(image, s[0], cfg)
    k = tf.random.stateless_uniform([], s[3], 0, 4, dtype=tf.int32)
    flip = tf.cast(_coin(s[4]), tf.int32)
    if not cfg.turn_view2:
        k, flip = tf.zeros_like(k), tf.zeros_like(flip)
    return {"view1": ld_jitter(base, s[1], cfg), "view2": rot_flip(ld_jitter(base, s[2], cfg), k=k, flip=flip),
            "k": k, "flip": flip, "mix": _uniform(s[5], *cfg.mixup)}


def ld_shape_masks(masks: tf.Tensor, seed: tf.Tensor, cfg: ml_collections.ConfigDict, *, num: int) -> tf.Tensor:
    """`num` masks drawn from `masks` [M, H, W, 1] (0/1 floats), each under its own `ld_base`: [num, H, W, 1].

    The shape prior's real examples get the images' geometric augmentation (rotation, flips, crop), so
    the critic cannot tell them from cluster maps by orientation; re-binarised at 0.5 after interpolation.
    """
    s = tf.unstack(split_seed(seed, 2 * num))
    picks = [masks[tf.random.stateless_uniform([], s[2 * i], 0, tf.shape(masks)[0], dtype=tf.int32)]
             for i in range(num)]
    return tf.stack([tf.cast(ld_base(m, s[2 * i + 1], cfg) > 0.5, tf.float32) for i, m in enumerate(picks)])
