"""A deterministic frontal chest-X-ray phantom with ground truth: data that needs no download.

Every image is drawn from its own seed `(seed, index)`, so any subset is reproducible on its own. Anatomy is
defined in a canonical frame ([0, 1]², x to the image's right, y down) and placed by a per-patient similarity
transform (scale, small rotation, shift) with per-patient shape variation (lung size, dome heights, heart
size), exposure and noise. "Right" and "left" in reports are the patient's: the patient's right lung is on the
image's left.

Per image: the image; anatomy masks (lungs, heart, clavicles); LANDMARKS (same index = same point on every
patient); the findings present (FINDINGS order) with a pixel-exact lesion mask and box; a report with
FINDINGS and IMPRESSION sentences naming each finding and where it is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

FINDINGS = ("nodule", "consolidation", "effusion", "cardiomegaly", "pneumothorax")
LANDMARKS = (
    "right_lung_apex", "left_lung_apex",
    "right_costophrenic_angle", "left_costophrenic_angle",
    "right_dome_top", "left_dome_top",
    "heart_right_border", "heart_left_border", "heart_top",
    "carina",
    "right_clavicle_medial", "left_clavicle_medial", "right_clavicle_lateral", "left_clavicle_lateral",
)
SIDES = {-1: "right", 1: "left"}  # Canonical x side (image left = -1) → patient side.


def generate(num: int, *, image_size: int, seed: int, abnormal_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """`num` phantom images with their ground truth (keys as in `cxr_jax.data.sources`)."""
    if not 32 <= image_size <= 1024:
        raise ValueError(f"phantom image_size must be in [32, 1024], got {image_size}")
    s = image_size
    out = {"image": np.empty((num, s, s, 1), np.uint8), "label": np.empty(num, np.int32),
           "findings": np.zeros((num, len(FINDINGS)), np.int32), "mask_lungs": np.empty((num, s, s), np.uint8),
           "mask_heart": np.empty((num, s, s), np.uint8), "mask_clavicles": np.empty((num, s, s), np.uint8),
           "mask_lesion": np.empty((num, s, s), np.uint8), "landmarks": np.empty((num, len(LANDMARKS), 2), np.float32),
           "box": np.full((num, 4), np.nan, np.float32), "text": np.empty(num, object)}
    for i in range(num):
        case = draw(np.random.default_rng([seed, i]), s, abnormal=None, abnormal_fraction=abnormal_fraction)
        for key, value in case.items():
            out[key][i] = value
    return out


def draw(rng: np.random.Generator, size: int, *, abnormal: bool | None = None,
         abnormal_fraction: float = 0.5) -> dict:
    """One patient: image, masks, landmarks, findings, box and report."""
    if abnormal is None:
        abnormal = bool(rng.random() < abnormal_fraction)
    p = _patient(rng)
    findings = _choose_findings(rng) if abnormal else []
    if "cardiomegaly" in findings:
        p["heart_scale"] *= rng.uniform(1.3, 1.45)
    u, v = _canonical_grid(p, size)
    anatomy = _anatomy(p, u, v)
    image = _base_image(rng, p, u, v, anatomy, size)
    lesion = np.zeros((size, size), bool)
    sentences = []
    for finding in findings:
        mask, sentence = LESIONS[finding](rng, p, u, v, anatomy, image)
        lesion |= mask
        sentences.append(sentence)
    image = image * p["exposure"] + rng.normal(0.0, 0.015, image.shape)
    ys, xs = np.nonzero(lesion)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [np.nan] * 4
    return {
        "image": np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None],
        "label": int(bool(findings)),
        "findings": np.array([f in findings for f in FINDINGS], np.int32),
        "mask_lungs": anatomy["lungs"], "mask_heart": anatomy["heart"], "mask_clavicles": anatomy["clavicles"],
        "mask_lesion": lesion, "landmarks": _landmarks(p, size), "box": np.asarray(box, np.float32),
        "text": _report(rng, findings, sentences),
    }


# --- Patient and canonical frame -------------------------------------------------------------------------

def _patient(rng) -> dict:
    return {
        "scale": rng.uniform(0.92, 1.04), "angle": rng.uniform(-0.06, 0.06),
        "shift": rng.uniform(-0.025, 0.025, 2), "exposure": rng.uniform(0.85, 1.12),
        "lung_w": rng.uniform(0.92, 1.08), "lung_h": rng.uniform(0.93, 1.06),
        "dome": {-1: rng.uniform(0.64, 0.68), 1: rng.uniform(0.67, 0.71)},  # Patient's right dome is higher.
        "heart_scale": rng.uniform(0.92, 1.08), "heart_dx": rng.uniform(0.03, 0.06),
    }


def _canonical_grid(p, size):
    """Canonical coordinates (u, v) of every pixel centre: the inverse of the patient's transform."""
    q = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(q, q, indexing="ij")
    c, s = np.cos(-p["angle"]), np.sin(-p["angle"])
    dx, dy = x - 0.5 - p["shift"][0], y - 0.5 - p["shift"][1]
    return (c * dx - s * dy) / p["scale"] + 0.5, (s * dx + c * dy) / p["scale"] + 0.5


def _to_pixels(points, p, size) -> np.ndarray:
    """Canonical (x, y) points → pixel coordinates (pixel centres at integers) of the patient's image."""
    pts = np.asarray(points, np.float32) - 0.5
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    x = (c * pts[:, 0] - s * pts[:, 1]) * p["scale"] + 0.5 + p["shift"][0]
    y = (s * pts[:, 0] + c * pts[:, 1]) * p["scale"] + 0.5 + p["shift"][1]
    return np.stack([x, y], 1) * size - 0.5


def _lung_geometry(p, side):
    """Centre x, centre y, radii and dome top of one lung's ellipse in the canonical frame."""
    return 0.5 + side * 0.2 * p["lung_w"], 0.45, 0.15 * p["lung_w"], 0.3 * p["lung_h"], p["dome"][side]


def _dome(p, side, u):
    xc, _, rx, _, top = _lung_geometry(p, side)
    return top + 0.12 * ((u - xc) / rx) ** 2


def _heart_geometry(p):
    return 0.5 + p["heart_dx"], 0.61, 0.13 * p["heart_scale"], 0.1 * p["heart_scale"]


def _ellipse(u, v, cx, cy, rx, ry):
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _segment_distance(u, v, a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d = b - a
    t = np.clip(((u - a[0]) * d[0] + (v - a[1]) * d[1]) / (d @ d), 0, 1)
    return np.hypot(u - a[0] - t * d[0], v - a[1] - t * d[1])


CLAVICLE = {side: ((0.5 + side * 0.045, 0.2), (0.5 + side * 0.27, 0.125)) for side in (-1, 1)}
CARINA = (0.5, 0.34)


def _anatomy(p, u, v) -> dict[str, np.ndarray]:
    heart = _ellipse(u, v, *_heart_geometry(p))
    mediastinum = (np.abs(u - 0.5) < 0.06) & (v > 0.12) & (v < 0.62)
    per_side = {}
    for side in (-1, 1):
        xc, yc, rx, ry, _ = _lung_geometry(p, side)
        field = _ellipse(u, v, xc, yc, rx, ry) & (v < _dome(p, side, u)) & ~heart & ~mediastinum
        per_side[side] = _largest_component(field)  # An enlarged heart can cut off an island below it.
    clavicles = np.zeros_like(heart)
    for a, b in CLAVICLE.values():
        clavicles |= _segment_distance(u, v, a, b) < 0.014
    return {"lungs": per_side[-1] | per_side[1], "lung_side": per_side, "heart": heart,
            "mediastinum": mediastinum, "clavicles": clavicles}


def _largest_component(mask):
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return labels == 1 + np.argmax(ndimage.sum(mask, labels, range(1, count + 1)))


def _smooth_noise(rng, size, cells):
    low = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC))


def _base_image(rng, p, u, v, anatomy, size) -> np.ndarray:
    image = np.full((size, size), 0.03, np.float32)
    body = _ellipse(u, v, 0.5, 0.58, 0.47, 0.6)
    image[body] = 0.45 + 0.05 * _smooth_noise(rng, size, 6)[body]
    markings = 0.035 * _smooth_noise(rng, size, max(size // 6, 8))  # Vessels and lung texture.
    lungs = anatomy["lungs"]
    image[lungs] = 0.16 + markings[lungs]
    trachea = (np.abs(u - 0.5) < 0.016) & (v > 0.04) & (v < CARINA[1])
    image[anatomy["mediastinum"] | anatomy["heart"]] = 0.62
    image[trachea] -= 0.15
    spine = (np.abs(u - 0.5) < 0.035) & body
    image[spine] = np.maximum(image[spine], 0.68 + 0.05 * (np.sin(v[spine] * 2 * np.pi / 0.055) > 0.6))
    thorax = _ellipse(u, v, 0.5, 0.42, 0.38, 0.33) & body
    for k in range(9):  # Posterior ribs: arcs falling laterally.
        rib = (np.abs(v - (0.16 + 0.062 * k) - 0.45 * (u - 0.5) ** 2) < 0.008) & thorax & (np.abs(u - 0.5) > 0.04)
        image[rib] += 0.1
    image[anatomy["clavicles"]] += 0.2
    return image


# --- Findings ----------------------------------------------------------------------------------------------

def _choose_findings(rng) -> list[str]:
    count = 1 if rng.random() < 0.75 else 2
    return [FINDINGS[i] for i in sorted(rng.choice(len(FINDINGS), count, replace=False))]


def _random_lung(rng, anatomy) -> tuple[int, np.ndarray]:
    """The side (-1 image left, 1 image right) and mask of the lung a lesion goes in."""
    side = int(rng.choice([-1, 1]))
    return side, anatomy["lung_side"][side]


def _zone(p, side, v_mask) -> str:
    _, yc, _, ry, _ = _lung_geometry(p, side)
    rel = (np.mean(v_mask) - (yc - ry)) / (p["dome"][side] - (yc - ry))
    return "upper" if rel < 0.36 else "mid" if rel < 0.66 else "lower"


def _pick_point(rng, region, u, v):
    ys, xs = np.nonzero(region)
    k = rng.integers(len(ys))
    return u[ys[k], xs[k]], v[ys[k], xs[k]]


def _nodule(rng, p, u, v, anatomy, image):
    side, region = _random_lung(rng, anatomy)
    r = rng.uniform(0.02, 0.045)
    inner = region & ~_near_edge(region)
    cu, cv = _pick_point(rng, inner if inner.any() else region, u, v)
    mask = _ellipse(u, v, cu, cv, r, r) & region
    image[mask] += rng.uniform(0.22, 0.35)
    mm = int(round(r * 2 * 350 / 5) * 5)  # A 35 cm wide field of view.
    where = f"{SIDES[side]} {_zone(p, side, v[mask])} zone"
    return mask, _choose(rng, [f"A {mm} mm nodule in the {where}.",
                               f"There is a {mm} mm nodular opacity in the {where}.",
                               f"{where.capitalize()} nodule measuring {mm} mm."])


def _consolidation(rng, p, u, v, anatomy, image):
    side, region = _random_lung(rng, anatomy)
    cu, cv = _pick_point(rng, region, u, v)
    mask = np.zeros_like(region)
    for _ in range(4):  # A lumpy union of ellipses.
        mask |= _ellipse(u, v, cu + rng.normal(0, 0.025), cv + rng.normal(0, 0.03), rng.uniform(0.03, 0.06),
                         rng.uniform(0.03, 0.07))
    mask &= region
    image[mask] += rng.uniform(0.18, 0.3) + 0.04 * _smooth_noise(rng, len(u), 12)[mask]
    where = f"{SIDES[side]} {_zone(p, side, v[mask])} zone"
    return mask, _choose(rng, [f"Patchy consolidation in the {where}.",
                               f"Airspace opacity in the {where}, consistent with consolidation.",
                               f"There is focal consolidation in the {where}."])


def _effusion(rng, p, u, v, anatomy, image):
    side, region = _random_lung(rng, anatomy)
    xc, yc, rx, ry, top = _lung_geometry(p, side)
    fraction = rng.uniform(0.12, 0.35)
    level = top - fraction * (top - (yc - ry))
    mask = region & (v > level - 0.06 * side * (u - xc) / rx)  # Meniscus rising laterally.
    image[mask] = 0.5 + 0.02 * rng.standard_normal()
    size = "small" if fraction < 0.2 else "moderate"
    return mask, _choose(rng, [f"{size.capitalize()} {SIDES[side]} pleural effusion.",
                               f"Blunting of the {SIDES[side]} costophrenic angle, consistent with a {size} "
                               f"pleural effusion.", f"There is a {size} {SIDES[side]}-sided pleural effusion."])


def _cardiomegaly(rng, p, u, v, anatomy, image):
    del p, u, v, image  # The heart was drawn enlarged (see `draw`).
    return anatomy["heart"].copy(), _choose(rng, ["The heart is enlarged.", "Cardiomegaly.",
                                                  "The cardiac silhouette is enlarged."])


def _pneumothorax(rng, p, u, v, anatomy, image):
    side, region = _random_lung(rng, anatomy)
    xc, yc, rx, ry, _ = _lung_geometry(p, side)
    shrink = rng.uniform(0.65, 0.85)
    collapsed = _ellipse(u, v, xc - side * rx * (1 - shrink) * 0.6, yc + ry * (1 - shrink) * 0.5, rx * shrink,
                         ry * shrink)
    mask = region & ~collapsed
    image[mask] = 0.09
    edge = region & collapsed & _near_edge(collapsed)
    image[edge] += 0.08  # The visceral pleural line.
    size = "small" if shrink > 0.78 else "moderate"
    return mask, _choose(rng, [f"{size.capitalize()} {SIDES[side]} pneumothorax.",
                               f"There is a {size} {SIDES[side]} apical pneumothorax.",
                               f"{SIDES[side].capitalize()}-sided pneumothorax with a visible pleural line."])


LESIONS = {"nodule": _nodule, "consolidation": _consolidation, "effusion": _effusion,
           "cardiomegaly": _cardiomegaly, "pneumothorax": _pneumothorax}


def _near_edge(mask):
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


# --- Landmarks and report ------------------------------------------------------------------------------------

def _landmarks(p, size) -> np.ndarray:
    points = []
    for side in (-1, 1):  # Apices.
        xc, yc, _, ry, _ = _lung_geometry(p, side)
        points.append((xc, yc - ry))
    for side in (-1, 1):  # Lateral costophrenic angles: where the lateral ellipse edge meets the dome.
        xc, yc, rx, ry, _ = _lung_geometry(p, side)
        t = np.linspace(0, np.pi / 2, 2000)
        x, y = xc + side * rx * np.cos(t), yc + ry * np.sin(t)
        k = np.argmin(np.abs(y - _dome(p, side, x)))
        points.append((x[k], y[k]))
    for side in (-1, 1):  # Dome tops.
        xc, _, _, _, top = _lung_geometry(p, side)
        points.append((xc, top))
    hx, hy, hrx, hry = _heart_geometry(p)
    points += [(hx - hrx, hy), (hx + hrx, hy), (hx, hy - hry), CARINA]
    points += [CLAVICLE[-1][0], CLAVICLE[1][0], CLAVICLE[-1][1], CLAVICLE[1][1]]
    return _to_pixels(points, p, size)


def _choose(rng, options):
    return options[rng.integers(len(options))]


NORMAL_FINDINGS = {
    "lungs": ["The lungs are clear.", "Lungs are clear bilaterally.", "No focal airspace opacity."],
    "heart": ["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits."],
    "pleura": ["No pleural effusion or pneumothorax.", "The costophrenic angles are sharp. No pneumothorax."],
}
NORMAL_IMPRESSIONS = ["No acute cardiopulmonary abnormality.", "Normal chest radiograph.",
                      "No acute cardiopulmonary process."]


def _report(rng, findings: list[str], sentences: list[str]) -> str:
    """FINDINGS: each present finding with its location, plus normal statements for untouched structures."""
    normal = []
    if not {"nodule", "consolidation", "pneumothorax"} & set(findings):
        normal.append(_choose(rng, NORMAL_FINDINGS["lungs"]))
    if "cardiomegaly" not in findings:
        normal.append(_choose(rng, NORMAL_FINDINGS["heart"]))
    if not {"effusion", "pneumothorax"} & set(findings):
        normal.append(_choose(rng, NORMAL_FINDINGS["pleura"]))
    impression = " ".join(sentences) if findings else _choose(rng, NORMAL_IMPRESSIONS)
    return f"FINDINGS: {' '.join(sentences + normal)} IMPRESSION: {impression}"
