"""One-shot landmark localisation with LD's pixel embeddings, and the two baselines it is compared with.

LD (Chen et al., TPAMI 2023) finds a landmark in a query image by matching its embedding in one labelled
template. Centre-sensitive averaging first replaces every pixel's embedding by a Gaussian-weighted average of
its neighbourhood (σ pixels at the run's image size), rescaled to unit length, so that a point is described by
its surroundings with the centre weighted most. Each template landmark's averaged embedding (bilinearly
sampled) is compared by cosine with every query pixel; the landmark goes to the best pixel, optionally refined
to the softmax-weighted centroid of a small window around it. Baselines: `copy` (the template's coordinates)
and `ncc` (normalised cross-correlation of a raw-intensity patch around each template landmark).

Radiographs are roughly aligned, so a landmark's best match anywhere in the image is often worse than the
template's own position. Optional priors, coarse to fine (as one-shot detectors such as CC2D use), keep the
answer near where the landmark should be: `window` > 0 looks for each match only within that radius of the
template's own position; `align` then moves all the template's points by one similarity or affine transform
fitted to those matches (trimmed least squares, so wrong matches do not pull it): a shape-constrained answer,
which `local_window` > 0 lets each point leave by a final search within that radius of its moved position.

Coordinates are (x, y) pixel centres of the square, resized frame the model sees (`fileio.square_coords`); the
command and the evaluator convert them to and from each image's own pixels.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from cxr_jax import parallel, runs
from cxr_jax.data.sources import fileio
from cxr_jax.methods.ld.geometry import ALIGN_PARAMETERS, fit_transform, within
from cxr_jax.ops import l2_normalize


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """[size, size] weights exp(−(i − j)² / 2σ²), zero beyond 3σ: one axis of the separable average."""
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    return np.where(np.abs(d) <= 3 * sigma, np.exp(-0.5 * (d / sigma) ** 2), 0.0).astype(np.float32)


def center_sensitive(embedding: jax.Array, *, sigma: float) -> jax.Array:
    """Gaussian-weighted local averages of [B, S, S, D] embeddings, rescaled to unit length."""
    g = jnp.asarray(gaussian_matrix(embedding.shape[1], sigma))
    return l2_normalize(jnp.einsum("ij,bjkd,lk->bild", g, embedding.astype(jnp.float32), g))


def sample(features: jax.Array, xy: jax.Array) -> jax.Array:
    """Bilinear samples [L, D] of a [S, S, D] map at points [L, 2] (x, y), clamped to the map."""
    s = features.shape[0]
    x, y = jnp.clip(xy[:, 0], 0, s - 1), jnp.clip(xy[:, 1], 0, s - 1)
    x0, y0 = jnp.minimum(jnp.floor(x), s - 2).astype(jnp.int32), jnp.minimum(jnp.floor(y), s - 2).astype(jnp.int32)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = features[y0, x0] * (1 - fx) + features[y0, x0 + 1] * fx
    bottom = features[y0 + 1, x0] * (1 - fx) + features[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def peaks(scores: jax.Array, *, refine: int = 0, temperature: float = 0.05) -> jax.Array:
    """(x, y) [B, L, 2] of the best pixel of each score map [B, L, S, S].

    With `refine` = r > 0, the centroid of softmax(score / temperature) over the (2r + 1)² window around it.
    """
    b, n, s, _ = scores.shape
    flat = jnp.argmax(scores.reshape(b, n, s * s), axis=-1)
    y, x = flat // s, flat % s
    if refine <= 0:
        return jnp.stack([x, y], -1).astype(jnp.float32)
    w = 2 * refine + 1
    y0, x0 = jnp.clip(y - refine, 0, s - w), jnp.clip(x - refine, 0, s - w)

    def window(m, y0, x0):
        patch = jax.lax.dynamic_slice(m, (y0, x0), (w, w))
        weights = jax.nn.softmax((patch / temperature).reshape(-1)).reshape(w, w)
        offsets = jnp.arange(w, dtype=jnp.float32)
        return jnp.stack([x0 + jnp.sum(weights.sum(0) * offsets), y0 + jnp.sum(weights.sum(1) * offsets)])

    return jax.vmap(jax.vmap(window))(scores, y0, x0)


def ld_scores(pooled: jax.Array, keys: jax.Array) -> jax.Array:
    """Cosine maps [B, L, S, S] of averaged query embeddings [B, S, S, D] against template keys [L, D]."""
    return jnp.einsum("bhwd,ld->blhw", pooled, keys)


def ncc_scores(images: jax.Array, template: jax.Array, xy: jax.Array, *, patch: int) -> jax.Array:
    """Normalised cross-correlation maps [B, L, S, S] of query images [B, S, S] with template windows.

    The windows are the odd `patch`-sided squares of `template` [S, S] around points xy [L, 2] (zero outside).
    """
    r = patch // 2
    padded = jnp.pad(template.astype(jnp.float32), r)
    centres = jnp.round(xy).astype(jnp.int32)
    windows = jax.vmap(lambda c: jax.lax.dynamic_slice(padded, (c[1], c[0]), (patch, patch)))(centres)
    windows = windows - windows.mean(axis=(1, 2), keepdims=True)
    windows = windows / jnp.maximum(jnp.linalg.norm(windows.reshape(len(xy), -1), axis=1), 1e-6)[:, None, None]
    x = images.astype(jnp.float32)[:, None]  # [B, 1, S, S]

    def conv(inputs, kernels):  # 'SAME' correlation, NCHW inputs, OIHW kernels.
        return jax.lax.conv_general_dilated(inputs, kernels, (1, 1), "SAME")

    box = jnp.ones((1, 1, patch, patch), jnp.float32)
    n = patch * patch
    local_sum, local_sq = conv(x, box), conv(x * x, box)
    spread = jnp.sqrt(jnp.maximum(local_sq - local_sum**2 / n, 0.0))
    return conv(x, windows[:, None]) / jnp.maximum(spread, 1e-6)


class Localiser:
    """A trained LD run at checkpoint `which` (latest, best or a step), ready to localise.

    `keys` from a template, then `locate` in query images.
    """

    def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None, mesh=None, *,
                 which: str | int = "latest"):
        self.mesh = mesh or parallel.make_mesh()
        self.config, self.method, self.state, self.step = runs.restore_run(
            workdir, "ld", needed="an LD run (configs/ld.py)", mesh=self.mesh, config=config, which=which)

    def keys(self, template: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Template features [L, D] at points xy [L, 2] of one square uint8 image [S, S, 1]."""
        return template_keys(self.method, self.state, self.mesh, template, xy)

    def locate(self, images: np.ndarray, keys: np.ndarray, template_xy: np.ndarray) -> np.ndarray:
        """(x, y) [N, L, 2] in the square frame of uint8 images [N, S, S, 1]."""
        return locate(self.method, self.state, self.mesh, images, keys, template_xy)["landmark"]


def template_keys(method, state, mesh, template: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The averaged template embedding [L, D] at each landmark (see the module docstring)."""
    return np.asarray(keys_at(_pooled(method, state, mesh, template[None])[0], xy))


def keys_at(pooled: np.ndarray | jax.Array, xy: np.ndarray | jax.Array) -> jax.Array:
    """Unit-length keys [L, D]: averaged embeddings [S, S, D] sampled at points xy [L, 2]."""
    return l2_normalize(sample(jnp.asarray(pooled), jnp.asarray(xy, jnp.float32)))


def locate(method, state, mesh, images: np.ndarray, keys: np.ndarray,
           template_xy: np.ndarray) -> dict[str, np.ndarray]:
    """Each landmark's position [N, L, 2] in every image, one batch at a time on the mesh.

    `landmark`: LD's answer; `expected`: where the search was centred (the template's points, moved when
    `landmarks.align` is set).
    """
    c = method.config.landmarks
    # A fit needs as many points as the transform has unknowns (half of them are trimmed): else no alignment.
    align = c.align if len(template_xy) >= ALIGN_PARAMETERS[c.align] else "none"
    fn = functools.partial(_locate_batch, method, keys=jnp.asarray(keys),
                           template_xy=jnp.asarray(template_xy, jnp.float32), sigma=c.sigma, refine=c.refine,
                           temperature=c.refine_temperature, window=c.window, align=align,
                           local_window=c.local_window, keep=c.align_keep)
    out, rows = runs.predict(method, state, {"image": images}, mesh, fn=fn)
    return {k: v[np.argsort(rows)] for k, v in out.items()}


def _locate_batch(method, state, batch, *, sigma, **search_args):
    return search(_pooled_batch(method, state, batch, sigma=sigma), **search_args)


def search(pooled: jax.Array, *, keys: jax.Array, template_xy: jax.Array, refine: int, temperature: float,
           window: float, align: str, local_window: float, keep: float) -> dict[str, jax.Array]:
    """`locate`'s answer for averaged query embeddings [B, S, S, D] (see the module docstring).

    `landmark`: the answer; `expected`: the template's points, moved when aligned.
    """
    scores = ld_scores(pooled, keys)
    template = jnp.broadcast_to(template_xy, (scores.shape[0], *template_xy.shape))
    matches = peaks(within(scores, template, window) if window > 0 else scores, refine=refine,
                    temperature=temperature)
    if align == "none":
        return {"landmark": matches, "expected": template}
    expected = jax.vmap(functools.partial(fit_transform, template_xy, kind=align, keep=keep))(matches)
    if local_window > 0:
        return {"landmark": peaks(within(scores, expected, local_window), refine=refine, temperature=temperature),
                "expected": expected}
    return {"landmark": expected, "expected": expected}


def _pooled(method, state, mesh, images: np.ndarray) -> np.ndarray:
    sigma = method.config.landmarks.sigma
    fn = functools.partial(_pooled_batch, method, sigma=sigma)
    pooled, _ = runs.predict(method, state, {"image": images}, mesh, fn=fn)
    return pooled


def _pooled_batch(method, state, batch, *, sigma):
    return center_sensitive(method.predict(state, batch)["embedding"], sigma=sigma)


# Template points and overlays (the command and the evaluator).


def read_points(path: str | pathlib.Path) -> tuple[list[tuple[str, int]], np.ndarray]:
    """A `structure,index,x,y` CSV (the jsrt layout): the (structure, index) of each row and its (x, y)."""
    path = pathlib.Path(path)
    rows = fileio.read_csv(path, ("structure", "index", "x", "y"))
    if not rows:
        raise fileio.DataError(f"{path}: no landmarks (expected rows of structure,index,x,y)")
    names = [(r["structure"], fileio.parse_number(path, line, "index", r["index"], int))
             for line, r in enumerate(rows, start=2)]
    xy = np.array([[fileio.parse_number(path, line, c, r[c]) for c in "xy"] for line, r in enumerate(rows, start=2)],
                  np.float32)
    return names, xy


def draw(image: np.ndarray, points: dict[str, np.ndarray], radius: int = 2) -> Image.Image:
    """An RGB overlay of point sets on a grayscale image, one colour per set (red, green, blue, …)."""
    colours = ((255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 64))
    canvas = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for colour, xy in zip(colours, points.values()):
        for x, y in xy:
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], outline=colour)
    return canvas
