"""Pictures of a DGM decomposition, drawn the same way by `cxr-jax decompose`, evaluation and training.

Per image: the synthesised normal y′ (gray), the residue r (signed, seismic colour map: blue removed
intensity, red added), the saliency scores as a heat-map over the input, and the kept components (red) with
their boxes (yellow) and the lung boxes (green) over the input. `full_size` draws them for `cli/decompose.py`
at the input's own size, with colour bars and a legend in the corners (as a viewer puts its annotations);
`samples` tiles them at the model's resolution for a few eval images into the picture the training loop
writes every `eval.every` steps; `evaluate` draws its cases with `draw_boxes` and `legend_handles`. Imported
lazily (by the command, the evaluator and `DGM.samples`): training needs no matplotlib.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image, ImageDraw

from cxr_jax import runs
from cxr_jax.data.sources import fileio
from cxr_jax.methods.dgm import saliency
from cxr_jax.metrics import image_grid

MIN_SIDE = 256  # Pixels: `full_size` enlarges an input whose longer side is shorter than this.
GRAY_LEVELS = 127.5  # The model's range [-1, 1] spans 255 gray levels: a residue × this is in the input's levels.
LUNG_COLOUR, COMPONENT_COLOUR, SALIENT_COLOUR, TRUTH_COLOUR = "#00c800", "#ffdc00", "#ff0000", "#00e5ff"
_DPI = 100
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="black")]  # White text readable on any pixel.


def gray(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W] of a model-range image [H, W, 1] in [-1, 1] (y′, or the input as the model sees it)."""
    return ((np.clip(x[..., 0], -1, 1) + 1) * 127.5).round().astype(np.uint8)


def residue_rgb(residue: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: the signed residue [H, W, 1] through the seismic map (white: 0)."""
    signed = matplotlib.colormaps["seismic"]((np.clip(residue[..., 0], -1, 1) + 1) / 2)[..., :3]
    return (signed * 255).astype(np.uint8)


def saliency_overlay(image: np.ndarray, found: dict, boxes) -> np.ndarray:
    """uint8 [H, W, 3]: the kept components in red with their boxes (yellow) and the lung boxes (green)."""
    overlay = _rgb(image)
    overlay[found["binary"]] = 0.4 * overlay[found["binary"]] + 0.6 * np.array([255, 0, 0])
    picture = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle(_pil_box(box), outline=(0, 200, 0))
    for component in found["components"]:
        draw.rectangle(_pil_box(component.box), outline=(255, 220, 0))
    return np.asarray(picture)


def find(config, residue: np.ndarray, boxes) -> dict:
    """`saliency.saliency` of one residue [H, W, 1] inside `boxes` with the config's `saliency.*` settings."""
    c = config.saliency
    return saliency.saliency(residue, boxes, method=c.threshold, percentile=c.percentile, polarity=c.polarity,
                             min_area=c.min_area, sigma=c.smooth_sigma)


def anomaly_map(config, outputs: dict, ae: bool = False) -> np.ndarray:
    """The map saliency is computed from: `saliency.source` ('residue': r, 'difference': z − y′) of `outputs`.

    With `ae`, the baseline's error z − AE(z) (`outputs['ae_residue']`) instead.
    """
    return outputs["ae_residue"] if ae else outputs[config.saliency.source]  # Checked by `DGM.__init__`.


def samples(method, state, mesh) -> np.ndarray:
    """Rows input | synthesised normal | residue | saliency for `method.sample_examples` (data.eval's first).

    Lung boxes come from the set's lung masks where it has them, else the whole image counts as lung (no
    segmenter run is consulted, to keep the picture cheap).
    """
    data = method.sample_examples
    # `anomaly_maps` (decompose and the baseline's error): the function evaluation compiled already.
    outputs, _ = runs.predict(method, state, {"image": data["image"]}, mesh, fn=method.anomaly_maps)
    rows = []
    for i, image in enumerate(data["image"][..., 0]):
        boxes = saliency.lung_boxes(data["mask_lungs"][i]) if "mask_lungs" in data else []
        found = find(method.config, anomaly_map(method.config, outputs)[i], boxes)
        rows.append([image, gray(outputs["normal"][i]), residue_rgb(outputs["residue"][i]),
                     saliency_overlay(image, found, boxes)])
    return image_grid(rows, titles=("input z", "synthesised normal y'", "residue r (red +, blue -)",
                                    "salient: red/yellow; lungs: green"))


def full_size(original: np.ndarray, normal: np.ndarray, residue: np.ndarray, found: dict,
              boxes) -> dict[str, np.ndarray]:
    """One decomposition's pictures at the input's own size, for reading beside the input.

    `original`: the decoded input, uint8 [h, w]. `normal`, `residue` [S, S, 1] (model range) and `found`
    (`find`'s, inside lung `boxes`) are at the model's resolution, on the input padded to a square; they are
    mapped back with `fileio.from_square` and boxes with `fileio.original_coords`. An input whose longer side
    is under MIN_SIDE is enlarged by the smallest integer factor reaching it (`display_scale`). Returns uint8
    'normal' (gray [H, W]) and RGB [H, W, 3] 'residue' (r in gray levels of the input, colour bar), 'heatmap'
    (the saliency scores ÷ their maximum over the input, colour bar) and 'saliency' (the kept components,
    their boxes and the lung boxes over the input, legend).
    """
    size, side = original.shape, normal.shape[0]
    k = display_scale(size)

    def back(box):
        return fileio.original_coords(np.reshape(box, (2, 2)), size, side, edges=True).ravel()

    normal = gray(fileio.from_square(normal[..., 0], size)[..., None])
    r = fileio.from_square(residue[..., 0], size) * GRAY_LEVELS
    scores = fileio.from_square(found["scores"] / max(found["scores"].max(), 1e-12), size)
    binary = fileio.from_square(found["binary"].astype(np.uint8), size, mask=True) > 0
    lungs, components = [back(b) for b in boxes], [back(c.box) for c in found["components"]]

    def residue_panel(ax, font, _):
        limit = float(max(1.0, np.ceil(np.percentile(np.abs(r), 99.5))))
        shown = ax.imshow(r, cmap="seismic", vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
        corner_colour_bar(ax, shown, "residue r\n(gray levels)", font, ticks=[-limit, 0, limit],
                          labels=[f"−{limit:.0f} removed", "0", f"+{limit:.0f} added"],
                          extend="both" if np.abs(r).max() > limit else "neither")

    def heatmap_panel(ax, font, _):
        ax.imshow(original, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
        shown = ax.imshow(scores, cmap="jet", vmin=0, vmax=1, alpha=0.45, interpolation="nearest", aspect="auto")
        corner_colour_bar(ax, shown, "saliency\n÷ its maximum", font, ticks=[0, 0.5, 1])

    def saliency_panel(ax, font, width):
        ax.imshow(original, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
        ax.imshow(tint(binary), interpolation="nearest", aspect="auto")
        draw_boxes(ax, lungs, LUNG_COLOUR, width)
        draw_boxes(ax, components, COMPONENT_COLOUR, width)
        ax.legend(handles=legend_handles(components=len(components), lungs=bool(lungs)), loc="upper left",
                  fontsize=font, framealpha=0.75)

    return {"normal": np.kron(normal, np.ones((k, k), np.uint8)),
            "residue": _render(size, k, residue_panel),
            "heatmap": _render(size, k, heatmap_panel),
            "saliency": _render(size, k, saliency_panel)}


def display_scale(orig_size: tuple[int, int]) -> int:
    """The integer factor enlarging an (h, w) image until its longer side is at least MIN_SIDE (1 if it is)."""
    return max(1, -(-MIN_SIDE // max(orig_size)))


def draw_boxes(ax, boxes, colour: str, width: float) -> None:
    """Outlines of (x0, y0, x1, y1) edge-coordinate boxes on an image drawn by `imshow` in the same pixels."""
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=width))


def legend_handles(*, components: int | None = None, lungs: bool = True, truth: bool = False) -> list:
    """Legend entries for the salient pixels and the boxes `draw_boxes` draws (`components`: their count)."""
    count = "" if components is None else f" ({components})"
    handles = [Patch(fc=SALIENT_COLOUR, alpha=0.6, label="salient pixels"),
               Patch(fill=False, ec=COMPONENT_COLOUR, lw=2, label=f"predicted component{count}")]
    if lungs:
        handles.append(Patch(fill=False, ec=LUNG_COLOUR, lw=2, label="lung box"))
    if truth:
        handles.append(Patch(fill=False, ec=TRUTH_COLOUR, lw=2, label="lesion (ground truth)"))
    return handles


def corner_colour_bar(ax, mappable, label: str, font: float, *, ticks, labels=None, extend: str = "neither"):
    """A colour bar in the upper right corner of `ax`, its label under it, white text outlined in black."""
    cax = ax.inset_axes((0.93, 0.58, 0.03, 0.36))
    bar = ax.figure.colorbar(mappable, cax=cax, ticks=ticks, extend=extend)
    cax.yaxis.set_ticks_position("left")
    cax.yaxis.set_label_position("left")
    cax.tick_params(labelsize=font, colors="white")
    if labels is not None:
        cax.set_yticklabels(labels)
    for text in cax.get_yticklabels():
        text.set_path_effects(_OUTLINE)
    # Under the bar rather than along it: a short bar on a small picture has no room for a rotated label.
    ax.text(0.985, 0.54, label, transform=ax.transAxes, ha="right", va="top", fontsize=font, color="white",
            path_effects=_OUTLINE)
    return bar


def _render(size: tuple[int, int], k: int, draw) -> np.ndarray:
    """uint8 RGB [k·h, k·w] of `draw(ax, font_pt, line_pt)` on axes filling the picture, in the image's pixels."""
    h, w = size[0] * k, size[1] * k
    fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    pt = 72 / _DPI  # Points per pixel: text and lines scale with the picture, legible when it is shrunk to a screen.
    draw(ax, max(11, 0.022 * max(h, w)) * pt, max(1.5, max(h, w) / 500) * pt)
    ax.set_xlim(-0.5, size[1] - 0.5)
    ax.set_ylim(size[0] - 0.5, -0.5)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:h, :w, :3]
    return np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")  # Rounding: ≤ 1 px.


def tint(binary: np.ndarray) -> np.ndarray:
    """RGBA [H, W, 4]: the salient colour at 60 % where `binary`, transparent elsewhere."""
    rgba = np.zeros((*binary.shape, 4), np.float32)
    rgba[binary] = (*matplotlib.colors.to_rgb(SALIENT_COLOUR), 0.6)
    return rgba


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None].astype(np.float64), 3, axis=-1)


def _pil_box(box) -> tuple[float, float, float, float]:
    """Edge coordinates (x1, y1 exclusive) to PIL's inclusive corner pixels."""
    x0, y0, x1, y1 = box
    return x0, y0, x1 - 1, y1 - 1
