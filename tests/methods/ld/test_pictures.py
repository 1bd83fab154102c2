"""LD's sample pictures: embedding components as colours, clusters, and the grid a trained run draws."""

import numpy as np

from cxr_jax import parallel, runs
from cxr_jax.methods.ld import pictures


def test_the_leading_component_is_red_and_spans_the_range():
    rng = np.random.default_rng(0)
    embedding = rng.normal(0, 0.01, (2, 4, 4, 5))
    embedding[:, :, :2, 0] += 1.0  # Left half vs right half: by far the largest variance.
    rgb = pictures.embedding_rgb(embedding)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.uint8
    red = rgb[..., 0].astype(int)
    left, right = red[:, :, :2], red[:, :, 2:]
    assert abs(left.mean() - right.mean()) > 200  # The sign of a component is arbitrary; the split is not.
    assert pictures.embedding_rgb(embedding[..., :2])[..., 2].max() == 0  # Fewer than 3 dimensions: blue empty.


def test_each_pixel_takes_its_clusters_colour():
    assignment = np.zeros((1, 2, 2, 3))
    assignment[0, 0, 0, 2] = assignment[0, 0, 1, 1] = assignment[0, 1, :, 0] = 1.0
    colours = pictures.cluster_map(assignment)[0]
    assert (colours[1, 0] == colours[1, 1]).all() and len({tuple(c) for c in colours.reshape(-1, 3)}) == 3


def test_a_trained_run_draws_input_embedding_and_clusters_per_image(ld_run):
    mesh = parallel.make_mesh()
    _, method, state, _ = runs.restore_run(ld_run, "ld", needed="an LD run", mesh=mesh)
    grid = method.samples(state, mesh)
    assert grid.shape == (26 + 4 * 258 - 2, 3 * 258 - 2, 3) and grid.dtype == np.uint8  # 32 px panels at 256 px.
