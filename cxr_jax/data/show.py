"""A contact sheet of a data set as the model sees it: image, masks, landmarks, boxes and text."""

from __future__ import annotations

import pathlib
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MASK_COLOURS = {"mask_lungs": "tab:blue", "mask_heart": "tab:red", "mask_clavicles": "tab:green",
                "mask_lesion": "magenta"}
LABEL_NAMES = {0: "normal", 1: "abnormal", -1: "unknown"}


def contact_sheet(data: dict[str, np.ndarray], out: str | pathlib.Path, *, num: int = 8, columns: int = 2,
                  title: str = "") -> list[int]:
    """Writes a PNG of `num` examples (evenly spaced through the set); returns the indices shown."""
    total = len(data["image"]) if "image" in data else 0
    if total == 0:
        raise ValueError("nothing to show: the data set has no images")
    indices = np.unique(np.linspace(0, total - 1, min(num, total)).round().astype(int)).tolist()
    rows = -(-len(indices) // columns)
    has_text = "text" in data
    fig, axes = plt.subplots(rows, columns * (2 if has_text else 1), squeeze=False,
                             figsize=(columns * (7 if has_text else 3.2), rows * 3.2))
    for ax in axes.flat:
        ax.axis("off")
    for n, i in enumerate(indices):
        r, c = divmod(n, columns)
        width = 2 if has_text else 1
        _panel(axes[r, c * width], data, i)
        if has_text:
            text = "\n".join(textwrap.wrap(str(data["text"][i]), 60)[:16])
            axes[r, c * width + 1].text(0, 1, text, va="top", ha="left", fontsize=7, family="monospace",
                                        transform=axes[r, c * width + 1].transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return indices


def _panel(ax, data, i):
    ax.imshow(data["image"][i, ..., 0], cmap="gray", vmin=0, vmax=255)
    for key, colour in MASK_COLOURS.items():
        if key in data and data[key][i].any() and data.get("has_mask", np.ones(len(data["image"]), bool))[i]:
            ax.contour(data[key][i], levels=[0.5], colors=colour, linewidths=0.8)
    if "landmarks" in data and np.isfinite(data["landmarks"][i]).all():
        ax.scatter(data["landmarks"][i, :, 0], data["landmarks"][i, :, 1], s=4, c="yellow")
    if "box" in data and np.isfinite(data["box"][i]).all():
        x0, y0, x1, y1 = data["box"][i]
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="orange", lw=1.2))
    label = LABEL_NAMES.get(int(data["label"][i]), "?") if "label" in data else ""
    name = pathlib.Path(str(data["name"][i])).name if "name" in data else str(i)
    ax.set_title(f"{name}  {label}", fontsize=7)
