"""Sample grids (`metrics.image_grid`)."""

import numpy as np

from cxr_jax import metrics


def test_grid_enlarges_small_panels_by_whole_pixels_and_titles_its_columns():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    rgb = np.zeros((4, 4, 3), np.uint8)
    plain = metrics.image_grid([[gray, rgb]], min_side=16, gap=2)
    assert plain.shape == (16, 2 * 16 + 2, 3)
    np.testing.assert_array_equal(plain[:16, :16, 0], np.kron(gray, np.ones((4, 4), np.uint8)))  # Nearest, ×4.
    assert (plain[:, 16:18] == 255).all() and (plain[:, 18:] == 0).all()  # White gap, then the black panel.
    titled = metrics.image_grid([[gray, rgb]], titles=("input", "output"), min_side=16, gap=2)
    band = titled.shape[0] - 16
    assert band > 0 and (titled[band:] == plain).all()  # The same panels under a band...
    assert (titled[:band, :16] < 128).any() and (titled[:band, 18:] < 128).any()  # ...with a title over each column.
