"""Per-example tf.data ops. Random ops are stateless, seeded by the example's `seed` ([2] int64)."""

from __future__ import annotations

import tensorflow as tf


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def random_shift(image: tf.Tensor, seed: tf.Tensor, max_shift: int) -> tf.Tensor:
    """Translates by up to `max_shift` pixels in each direction, filling with the image minimum."""
    if max_shift == 0:
        return image
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    low = tf.reduce_min(image)
    padded = tf.pad(image - low, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]]) + low
    offset = tf.random.stateless_uniform([2], seed, 0, 2 * max_shift + 1, dtype=tf.int32)
    return tf.slice(padded, [offset[0], offset[1], 0], [h, w, tf.shape(image)[2]])


def random_contrast(image: tf.Tensor, seed: tf.Tensor, amount: float) -> tf.Tensor:
    """Scales deviations from the image mean by a factor drawn from [1 - amount, 1 + amount]."""
    if amount == 0:
        return image
    factor = tf.random.stateless_uniform([], seed, 1.0 - amount, 1.0 + amount)
    mean = tf.reduce_mean(image)
    return (image - mean) * factor + mean


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """`num` independent seeds [num, 2] from one."""
    return tf.random.experimental.stateless_split(seed, num)
