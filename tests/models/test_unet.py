"""The VGG16-bn-tiny U-Net: stage shapes, the official channel layout, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import unet


def test_encoder_stages_have_the_official_strides_and_channels():
    x = jnp.zeros((2, 64, 64, 1))
    variables = unet.VGGEncoder().init(jax.random.key(0), x)
    stages = unet.VGGEncoder().apply(variables, x)
    assert [s.shape for s in stages] == [(2, 64, 64, 16), (2, 32, 32, 32), (2, 16, 16, 64), (2, 8, 8, 128),
                                         (2, 4, 4, 128)]


def test_parameter_count_matches_the_official_layout():
    # Conv 3×3 (weights + bias) and BatchNorm (scale + bias) per layer, counted from the official channel lists.
    def conv_bn(cin, cout):
        return 9 * cin * cout + cout + 2 * cout

    encoder = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 128), (128, 128),
               (128, 128), (128, 128), (128, 128), (128, 128)]
    decoder = [(256, 128), (128, 64), (128, 64), (64, 32), (64, 32), (32, 16), (32, 16), (16, 16)]
    head = 9 * 16 * 3 + 3
    want = sum(conv_bn(*c) for c in encoder + decoder) + head
    variables = unet.SegmentationUNet(3).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == want


def test_segmenter_logits_and_batch_statistics():
    model = unet.SegmentationUNet(2, layers=(4, "M", 8), widths=((4, 4),))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (3, 8, 8, 2) and logits.dtype == jnp.float32
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                         variables["batch_stats"], updates["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0  # Training updates the running statistics…
    again = model.apply(variables, x)  # …and inference uses them without changing them.
    np.testing.assert_allclose(again, model.apply(variables, x), rtol=0, atol=0)
    assert unet.num_pools((4, "M", 8, "M", 8)) == 2


def test_decoder_rejects_a_mismatched_encoder():
    stages = [jnp.zeros((1, 8, 8, 4)), jnp.zeros((1, 4, 4, 8))]
    with pytest.raises(ValueError, match="2 levels but the encoder gave 1"):
        unet.UNetDecoder(((4, 4), (4, 4))).init(jax.random.key(0), stages)
