"""Deterministic synthetic FER-style faces: the built-in data when the user gives none.

Each image is a cartoon face drawn from geometry (soft distance fields on a 48x48 grid),
fully vectorised over the batch. The seven expressions differ in brow height/slant, eye
openness and mouth shape, each with a random per-sample intensity so that classes overlap
(angry/sad/fear get confused, as in real FER2013). Nuisance variation (pose, scale, lighting,
background, noise, occlusion) keeps a linear model on raw pixels well below a small CNN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fer_ray.data._types import (
    CLASS_NAMES,
    FER2013_TRAIN_COUNTS,
    IMAGE_SIZE,
    NUM_CLASSES,
    Split,
)
from fer_ray.errors import ConfigError

Num = float | np.ndarray  # a scalar or a per-sample (m,1,1) array

# Expression parameters, in face units (the face ellipse is ~0.62 wide, ~0.8 high; y points
# down; 0.1 unit is about 2.4 px at scale 1). Order of the columns of _DELTAS:
_PARAMS = ("brow_h", "brow_slant", "eye_open", "curve", "open", "width", "asym", "wrinkle",
           "cheek")
_NEUTRAL = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
# Change from neutral at full intensity, one row per class (see CLASS_NAMES).
# brow_h > 0 raises the brows, brow_slant > 0 lifts their inner ends, curve > 0 lifts the
# mouth corners (smile), open is the lip gap, asym lifts one mouth corner (disgust sneer).
_DELTAS = np.array([
    [-0.09, -0.10, -0.40, -0.03, 0.00, -0.15, 0.00, 0.30, 0.00],  # angry
    [-0.06, -0.04, -0.30, -0.05, 0.04, -0.05, 0.10, 1.00, 0.50],  # disgust
    [0.08, 0.09, 0.45, -0.03, 0.07, 0.30, 0.00, 0.00, 0.00],  # fear
    [0.00, 0.00, -0.25, 0.12, 0.03, 0.25, 0.00, 0.00, 1.00],  # happy
    [0.00, 0.10, -0.30, -0.10, 0.00, -0.05, 0.00, 0.00, 0.00],  # sad
    [0.14, 0.02, 0.55, 0.00, 0.17, -0.40, 0.00, 0.00, 0.00],  # surprise
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # neutral
])
# Person-to-person spread of each parameter, independent of the expression: this is
# the main overlap knob (with the intensity range below).
_JITTER = np.array([0.033, 0.033, 0.135, 0.028, 0.013, 0.09, 0.018, 0.135, 0.135])
_INTENSITY = (0.25, 1.0)
_OCCLUDED_FRACTION = 0.2
_HAPPY = CLASS_NAMES.index("happy")
# Images rendered at once: keeps the (chunk, 48, 48) temporaries cache-sized. Pixel noise is
# drawn per chunk, so changing this changes the output for a given seed.
_CHUNK = 256


def _class_counts(n: int, weights: Sequence[int] | None) -> np.ndarray:
    """(7,) int64 counts summing to n, proportional to weights (largest remainder)."""
    if weights is None:
        weights = FER2013_TRAIN_COUNTS
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"class_counts must be {NUM_CLASSES} numbers, got {weights!r}") from exc
    if w.shape != (NUM_CLASSES,):
        raise ConfigError(
            f"class_counts must have {NUM_CLASSES} entries (one per class), got {w.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError("class_counts must be non-negative with a positive sum, "
                          f"got {list(weights)}")
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    # Largest remainders get the leftover units; stable sort breaks ties by class index.
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    # Rare classes (disgust) must still appear: borrow from the most over-served class.
    wanted = w > 0
    if n >= int(wanted.sum()):
        for c in np.flatnonzero(wanted & (counts == 0)):
            donor = int(np.argmax(np.where(counts > 1, counts - quota, -np.inf)))
            counts[donor] -= 1
            counts[c] += 1
    return counts


def _stroke(a: np.ndarray, b: np.ndarray, a0: float, b0: Num, a1: float, b1: Num,
            half_width: Num) -> np.ndarray:
    """Signed distance (m,48,48) to a thick stroke from (a0,b0) to (a1,b1), square ends.

    Measured along b, so the stroke must run mostly along a (brows: a=x; folds: a=y); this
    avoids the sqrt and projection of an exact segment distance, which dominated run time.
    """
    slope = (b1 - b0) / (a1 - a0)
    across = np.abs(b - slope * a - (b0 - slope * a0)) - half_width
    along = np.abs(a - 0.5 * (a0 + a1)) - 0.5 * abs(a1 - a0)
    return np.maximum(across, along)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: Num, cy: Num, a: Num, b: Num) -> np.ndarray:
    """Approximate signed distance (m,48,48) to an ellipse, first order near the boundary.

    (q^2 - 1)/2 instead of q - 1 (q = normalised radius): same slope at the edge, no sqrt.
    """
    q2 = ((x - cx) * (1.0 / a)) ** 2 + ((y - cy) * (1.0 / b)) ** 2
    # float32 cast: np.minimum of two Python floats is a float64 scalar, which would
    # promote the whole array to float64 (NumPy 2 rules) and double the run time.
    return (q2 - 1.0) * np.float32(0.5) * np.minimum(a, b).astype(np.float32)


def _render(p: dict[str, np.ndarray], sl: slice) -> np.ndarray:
    """Draw images sl of the batch from per-sample parameters p; returns (m,48,48) float32."""
    q = {k: v[sl, None, None].astype(np.float32) for k, v in p.items()}
    m = sl.stop - sl.start
    g = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
    gx, gy = g[None, None, :], g[None, :, None]
    # Face coordinates: undo shift, rotation, scale and aspect, so features are drawn upright.
    cos, sin = np.cos(q["rot"]), np.sin(q["rot"])
    ux, uy = gx - q["cx"], gy - q["cy"]
    x = (cos * ux + sin * uy) / (q["scale"] * q["fw"])
    y = (-sin * ux + cos * uy) / (q["scale"] * q["fh"])
    inv_aa = -(IMAGE_SIZE - 1) / 2.0 * q["scale"]  # -1 / (one pixel in face units)
    shade = np.ones((m, IMAGE_SIZE, IMAGE_SIZE), np.float32)

    def coverage(d: np.ndarray) -> np.ndarray:
        # Soft edge one pixel wide: anti-aliasing, and a sub-pixel geometry change still
        # changes pixel values (brow heights differ by ~1-2 px between classes).
        return np.clip(d * inv_aa + 0.5, 0.0, 1.0)

    def darken(d: np.ndarray, amount: Num) -> None:
        # Multiplicative so overlapping features never go below black.
        shade[...] *= 1.0 - coverage(d) * amount

    eye_h = 0.055 * np.maximum(q["eye_open"], 0.15)
    brow_y = -0.31 - q["brow_h"]
    cheek = 0.35 * np.clip(q["cheek"], 0.0, 1.0)
    wrinkle = 0.45 * np.clip(q["wrinkle"], 0.0, 1.0)
    for side in (-1.0, 1.0):
        sx = x * side  # mirror so one code path draws both halves
        darken(_ellipse(sx, y, 0.25, -0.12, 0.11, eye_h), 0.8)
        # Brows: inner end (x=0.08) moves with height + slant, outer end with height only.
        darken(_stroke(sx, y, 0.08, brow_y - q["brow_slant"], 0.42, brow_y, q["brow_t"]), 0.7)
        # Nasolabial folds (along y): visible when the cheeks are raised (happy, disgust).
        darken(_stroke(y, sx, 0.12, 0.13, 0.40, 0.27, 0.018), cheek)
        # Nose-bridge wrinkles (disgust, some angry).
        darken(_stroke(sx, y, 0.02, 0.0, 0.09, -0.03, 0.015), wrinkle)
    # Nose: a faint vertical line and a nostril base.
    darken(_stroke(y, x, -0.02, 0.0, 0.17, 0.0, 0.012), 0.25)
    darken(_ellipse(x, y, 0.0, 0.2, 0.08, 0.03), 0.35)
    # Mouth: a centre curve y_c(u) (corners lifted by curve, one side by asym) with a lens of
    # half-height lip + open*sqrt(1-u^2): closed lips -> thin line, open -> dark oval.
    w = 0.2 * np.maximum(q["width"], 0.35)
    u = x * (1.0 / w)
    u2 = u * u
    yc = 0.43 - q["curve"] * u2 - q["asym"] * np.maximum(q["asym_side"] * u, 0.0)
    half = 0.03 + np.maximum(q["open"], 0.0) * np.sqrt(np.clip(1.0 - u2, 0.0, 1.0))
    darken(np.maximum(np.abs(y - yc) - half, (np.abs(u) - 1.0) * w), 0.75)
    # Face on background; skin is lit by a linear gradient (side lighting).
    face = coverage(_ellipse(x, y, 0.0, 0.0, 0.62, 0.8))
    skin = q["skin"] + q["grad_x"] * gx + q["grad_y"] * gy
    return face * (skin * shade - q["bg"]) + q["bg"]


def _background_texture(m: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture (m,48,48): a 6x6 random grid upsampled bilinearly."""
    grid = rng.standard_normal((m, 6, 6)).astype(np.float32)
    src = np.linspace(0.0, 5.0, IMAGE_SIZE)
    lo = np.minimum(np.floor(src).astype(int), 4)
    frac = (src - lo).astype(np.float32)
    up = np.zeros((IMAGE_SIZE, 6), np.float32)  # interpolation matrix, rows sum to 1
    up[np.arange(IMAGE_SIZE), lo] = 1.0 - frac
    up[np.arange(IMAGE_SIZE), lo + 1] = frac
    return np.einsum("ia,mab,jb->mij", up, grid, up, optimize=True)


def make_synthetic(n: int, seed: int = 0, class_counts: Sequence[int] | None = None) -> Split:
    """Generate n synthetic faces.

    Returns a Split with images (n,48,48) uint8 and shuffled labels (n,) int64. Classes follow
    FER2013's training ratios (FER2013_TRAIN_COUNTS) unless class_counts (7 non-negative
    weights) is given; counts are exactly proportional (largest remainder), and each class with
    a positive weight gets at least one sample when n allows. Same (n, seed, class_counts) gives
    byte-identical output.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"synthetic data size n must be a positive integer, got {n!r}")
    n = int(n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic data seed must be a non-negative integer, got {seed!r}")
    counts = _class_counts(n, class_counts)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), counts))

    # Expression: neutral + intensity * class delta + person-specific jitter.
    intensity = rng.uniform(*_INTENSITY, size=(n, 1))
    expr = _NEUTRAL + intensity * _DELTAS[labels] + rng.standard_normal((n, 9)) * _JITTER
    p: dict[str, np.ndarray] = {k: expr[:, i] for i, k in enumerate(_PARAMS)}
    # Happy: about half the smiles are open-mouthed.
    p["open"] = p["open"] + (labels == _HAPPY) * (rng.random(n) < 0.5) * intensity[:, 0] * 0.08
    p["asym_side"] = rng.choice([-1.0, 1.0], size=n)
    p["brow_t"] = rng.uniform(0.02, 0.04, n)
    # Nuisance: pose, shape, lighting, background.
    p["cx"] = rng.uniform(-0.2, 0.2, n)
    p["cy"] = rng.uniform(-0.15, 0.15, n)
    p["rot"] = rng.uniform(-0.35, 0.35, n)  # about +-20 degrees
    p["scale"] = rng.uniform(0.85, 1.2, n)
    p["fw"] = rng.uniform(0.9, 1.1, n)
    p["fh"] = rng.uniform(0.9, 1.1, n)
    p["skin"] = rng.uniform(0.45, 0.85, n)
    p["grad_x"] = rng.uniform(-0.2, 0.2, n)
    p["grad_y"] = rng.uniform(-0.1, 0.1, n)
    p["bg"] = rng.uniform(0.05, 0.9, n)
    contrast = rng.uniform(0.7, 1.2, (n, 1, 1)).astype(np.float32)
    bright = rng.uniform(-0.1, 0.1, (n, 1, 1)).astype(np.float32)
    tex_amp = rng.uniform(0.0, 0.12, (n, 1, 1)).astype(np.float32)
    noise_sd = rng.uniform(0.01, 0.06, (n, 1, 1)).astype(np.float32)
    # Occlusion: an axis-aligned box (hand, hair, glasses-like bar) over part of the image.
    occluded = rng.random(n) < _OCCLUDED_FRACTION
    box_lo = rng.integers(0, IMAGE_SIZE - 8, (n, 2))
    box_size = rng.integers(8, 24, (n, 2))
    box_val = rng.uniform(0.0, 1.0, n).astype(np.float32)

    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    pix = np.arange(IMAGE_SIZE)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        img = _render(p, sl)
        # Texture over the whole image: background clutter, and uneven shading on the face.
        img += tex_amp[sl] * _background_texture(m, rng)
        rows = (pix >= box_lo[sl, :1]) & (pix < box_lo[sl, :1] + box_size[sl, :1])
        cols = (pix >= box_lo[sl, 1:]) & (pix < box_lo[sl, 1:] + box_size[sl, 1:])
        box = rows[:, :, None] & cols[:, None, :] & occluded[sl, None, None]
        img = np.where(box, box_val[sl, None, None], img)
        img = (img - 0.5) * contrast[sl] + 0.5 + bright[sl]
        img += noise_sd[sl] * rng.standard_normal(img.shape, dtype=np.float32)
        out[sl] = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return Split(images=out, labels=labels, source=f"synthetic(n={n}, seed={seed})")


def paste_faces(faces: np.ndarray, side: int, canvas: tuple[int, int] = (480, 640),
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A photo made of faces pasted enlarged at known, non-overlapping squares.

    faces: (k, 48, 48) uint8 face crops (e.g. FER2013's). side: their pasted size in px.
    canvas: (height, width). The background is a smooth lighting gradient with sensor-like
    noise, so the photo is not trivially flat around the faces.
    Returns (photo (height, width) uint8, boxes (k, 4) int: x, y, side, side of each face).
    Raises ConfigError when the faces cannot be placed without overlapping.
    """
    from PIL import Image

    height, width = canvas
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    light = 90 + 70 * (xx / width) + 30 * np.sin(yy / height * np.pi)
    photo = np.clip(light + rng.normal(0, 6, (height, width)), 0, 255)
    rows, cols = height // side, width // side
    cell_h, cell_w = (height // rows, width // cols) if rows and cols else (0, 0)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if len(faces) > len(cells):
        raise ConfigError(f"{len(faces)} faces of {side} px do not fit a {width}x{height} photo")
    boxes = np.zeros((len(faces), 4), dtype=np.int64)
    for i, cell in enumerate(rng.permutation(len(cells))[:len(faces)]):
        row, col = cells[cell]
        # A random offset inside the cell: positions are not on a grid a test could guess.
        y = row * cell_h + int(rng.integers(0, cell_h - side + 1))
        x = col * cell_w + int(rng.integers(0, cell_w - side + 1))
        big = Image.fromarray(faces[i]).resize((side, side), Image.Resampling.BICUBIC)
        photo[y:y + side, x:x + side] = np.asarray(big)
        boxes[i] = (x, y, side, side)
    return photo.astype(np.uint8), boxes
