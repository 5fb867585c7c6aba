"""Synthetic chest radiographs: the embedded demo dataset.

Both classes share anatomy (body, lungs, heart, spine, ribs, clavicles), acquisition variation
(exposure, gamma, position, rotation, scale, noise), smooth soft-tissue densities and L/R markers.
Covid images add patchy, mostly peripheral and lower-zone ground-glass opacities, some faint: a
texture signal, not a brightness or marker shortcut. The optional third class, Pneumonia, adds a
lobar consolidation instead: one dense, fairly homogeneous opacity in one lobe of one lung, sharp
where a fissure bounds it and fading elsewhere, with air bronchograms (dark branching airways
inside it).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

CLASS_DIRS = {"Normal": "NORMAL", "Covid": "COVID", "Pneumonia": "PNEUMONIA"}

# 5x7 bitmaps of the radiographer's side markers
_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask from a signed 'distance' d (<1 inside); width sets the edge blur."""
    return 1.0 / (1.0 + np.exp((d - 1.0) / width))


def _ellipse(x, y, cx, cy, rx, ry, width=0.04):
    return _soft(np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2), width)


def _grid(rng: np.random.Generator, size: int):
    """Body coordinates of each pixel after a random rotation, scale and shift."""
    v, u = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    th = np.deg2rad(rng.uniform(-6, 6))
    s = rng.uniform(0.9, 1.1)
    du, dv = rng.uniform(-0.06, 0.06, size=2)
    u, v = u - du, v - dv
    x = (np.cos(th) * u + np.sin(th) * v) / s
    y = (-np.sin(th) * u + np.cos(th) * v) / s
    return x, y


def _lungs(x, y, rng):
    """Two lung fields, wider at the base; returns the soft mask."""
    m = np.zeros_like(x)
    for side in (-1, 1):
        cx = side * rng.uniform(0.36, 0.42)
        cy, ry = rng.uniform(-0.10, 0.0), rng.uniform(0.52, 0.60)
        rx = rng.uniform(0.25, 0.31) * (0.8 + 0.2 * np.clip((y - cy) / ry, -1, 1))
        m = np.maximum(m, _ellipse(x, y, cx, cy, rx, ry, 0.05))
    return m


def _ribs(x, y, rng):
    out = np.zeros_like(x)
    y0, step = rng.uniform(-0.62, -0.55), rng.uniform(0.10, 0.12)
    ax = np.abs(x)
    curve, span = 0.35 * (ax - 0.1) ** 2, (ax > 0.08) & (ax < 0.78)  # the same for every rib
    for k in range(10):
        yc = y0 + k * step + curve
        band = np.exp(-(((y - yc) / 0.016) ** 2))
        out += band * span
    return out


def _smooth_field(rng, size, sigma):
    f = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _site(x, y, inside, rng):
    """A lung pixel, drawn with preference for the periphery and the lower zones."""
    for _try in range(30):
        r, c = inside[rng.integers(len(inside))]
        w = np.clip(abs(x[r, c]) / 0.6, 0, 1) * np.clip((y[r, c] + 0.6) / 1.0, 0.1, 1)
        if rng.random() < w:
            break
    return x[r, c], y[r, c]


def _densities(x, y, lungs, rng, size, covid: bool):
    """Smooth soft-tissue densities in both classes (overlap, breast shadows) at the sites where
    opacities occur; Covid adds patchy ground-glass opacities: a mottled texture, some faint."""
    out = np.zeros_like(x)
    inside = np.argwhere(lungs > 0.6)
    if len(inside) == 0:
        return out
    for _ in range(rng.integers(0, 4)):
        cx, cy = _site(x, y, inside, rng)
        rad = rng.uniform(0.1, 0.22)
        out += rng.uniform(0.02, 0.10) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rad**2))
    if covid:
        texture = np.clip(_smooth_field(rng, size, 0.9) * 2.5, 0, 1)
        for _ in range(rng.integers(1, 6)):
            cx, cy = _site(x, y, inside, rng)
            rad = rng.uniform(0.07, 0.18)
            env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rad**2))
            out += rng.uniform(0.08, 0.30) * env * (0.05 + texture)
    return out * lungs


def _consolidation(x, y, lungs, rng, size):
    """A lobar consolidation: one lobe (upper or lower) of one lung, bounded by an oblique fissure
    with a sharp edge, filled by a focal, saturating density with a mild texture, and two to four
    air bronchograms running out from the hilum."""
    side = rng.choice([-1.0, 1.0])
    fissure = rng.uniform(-0.12, 0.08) + rng.uniform(-0.25, 0.25) * side * x
    upper = rng.random() < 0.4
    lobe = _soft(np.where(upper, y - fissure, fissure - y) / 0.02 + 1.0, 0.3) * (side * x > 0.05)
    cx = side * rng.uniform(0.3, 0.5)
    cy = rng.uniform(-0.45, -0.15) if upper else rng.uniform(0.1, 0.35)
    rad = rng.uniform(0.18, 0.32)
    env = 1.0 - np.exp(-3.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rad**2)))
    dense = rng.uniform(0.22, 0.40) * (0.85 + 0.15 * _smooth_field(rng, size, 1.5))
    airways = np.zeros_like(x)
    hx, hy = side * 0.15, rng.uniform(-0.1, 0.05)
    for _ in range(rng.integers(2, 5)):
        ang = np.arctan2(cy - hy, cx - hx) + rng.uniform(-0.5, 0.5)
        d = np.cos(ang) * (y - hy) - np.sin(ang) * (x - hx)  # distance across the airway
        t = np.cos(ang) * (x - hx) + np.sin(ang) * (y - hy)  # distance along it from the hilum
        airways = np.maximum(airways, np.exp(-((d / 0.012) ** 2)) * (t > 0))
    return dense * env * lobe * lungs * (1.0 - 0.35 * airways)


def _marker(img: np.ndarray, rng: np.random.Generator) -> None:
    glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[rng.choice(["L", "R"])]])
    scale = max(1, img.shape[0] // 64)
    g = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    h, w = g.shape
    m = max(2, img.shape[0] // 32)
    r = m if rng.random() < 0.5 else m + rng.integers(0, m)
    c = m if rng.random() < 0.5 else img.shape[1] - w - m
    img[r : r + h, c : c + w][g] = rng.uniform(0.85, 1.0)


SHORTCUTS = ("none", "border", "marker", "exposure")


def add_shortcut(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A source artefact of the kind public sets carry when each class comes from its own site,
    on a float image in [0, 1]: a black frame (another scanner's padding), a burned-in text label,
    or a brighter, flatter exposure (another detector and processing)."""
    img = img.copy()
    s = img.shape[0]
    if kind == "border":
        b = max(2, int(round(s * rng.uniform(0.05, 0.08))))
        img[:b], img[-b:], img[:, :b], img[:, -b:] = 0, 0, 0, 0
    elif kind == "marker":
        h, w = max(3, s // 16), max(8, s // 4)
        r, c = max(1, s // 32), max(1, s // 32)
        img[r : r + h, c : c + w] = np.where(rng.random((h, w)) < 0.5, 1.0, 0.05)
    elif kind == "exposure":
        img = np.clip(img, 0, 1) ** 0.75 * 0.85 + 0.12
    return img


def _site_b(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another hospital's acquisition of the same anatomy and disease: a brighter, flatter
    exposure (another detector and processing), softer and noisier (lower dose, another
    resolution), and a burned-in label block along the bottom edge; on every image of both
    classes, so it is a site difference, not a class shortcut."""
    s = img.shape[0]
    img = np.clip(img, 0, 1) ** rng.uniform(0.6, 0.8) * rng.uniform(0.75, 0.85) + rng.uniform(0.10, 0.18)
    img = gaussian_filter(img, rng.uniform(0.8, 1.2)) + rng.normal(0, rng.uniform(0.03, 0.05), img.shape)
    h, w = max(3, s // 20), max(8, s // 3)
    c = int(rng.integers(s // 32, s - w - s // 32))
    img[s - h - s // 32 : s - s // 32, c : c + w] = np.where(rng.random((h, w)) < 0.4, 0.95, 0.2)
    return img


def render_cxr(
    rng: np.random.Generator,
    size: int,
    covid: bool,
    shortcut: str = "none",
    pneumonia: bool = False,
    site: str = "a",
) -> np.ndarray:
    """One synthetic radiograph as a (size, size) uint8 array; `shortcut` adds a source artefact
    to Covid images only (the demo's lesson: the probes flag it); `pneumonia` (with covid False)
    adds a lobar consolidation; site "b" acquires it the way a second hospital does."""
    x, y = _grid(rng, size)
    body = _ellipse(x, y, 0.0, 0.08, rng.uniform(0.8, 0.9), 1.1, 0.03)
    lungs = _lungs(x, y, rng)
    heart = _ellipse(x, y, rng.uniform(0.05, 0.15), rng.uniform(0.28, 0.38), 0.3, 0.24)
    spine = np.exp(-((x / 0.07) ** 4)) * (0.85 + 0.15 * np.cos(y * 40))
    clav = sum(
        np.exp(-(((y - (-0.64 - 0.15 * abs(x))) / 0.02) ** 2)) * (abs(x) < 0.6) * (s * x > 0.08)
        for s in (-1, 1)
    )
    a = 0.45 * body - 0.30 * lungs * body + 0.14 * heart + 0.25 * spine * body
    a += 0.10 * _ribs(x, y, rng) * body + 0.12 * clav * body
    a += 0.03 * _smooth_field(rng, size, size / 10) * body
    a += _densities(x, y, lungs, rng, size, covid)
    if pneumonia:
        a += _consolidation(x, y, lungs, rng, size)
    img = np.clip(a * rng.uniform(0.9, 1.5) + rng.uniform(-0.05, 0.12), 0, 1) ** rng.uniform(0.8, 1.25)
    img = gaussian_filter(img, 0.6) + rng.normal(0, rng.uniform(0.01, 0.03), img.shape)
    _marker(img, rng)
    if site == "b":
        img = _site_b(img, np.random.default_rng(rng.integers(2**32)))
    if covid and shortcut != "none":
        img = add_shortcut(img, shortcut, np.random.default_rng(rng.integers(2**32)))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _write_one(args: tuple[Path, str, int, int, int, int, str, str]) -> None:
    folder, cls, label, i, size, seed, shortcut, site = args
    rng = np.random.default_rng([seed, label, i] if site == "a" else [seed, label, i, 2])  # per image
    arr = render_cxr(rng, size, cls == "Covid", shortcut, cls == "Pneumonia", site)
    prefix = "" if site == "a" else f"site-{site}-"
    Image.fromarray(arr, mode="L").save(folder / f"{prefix}{cls}-{i + 1:04d}.png")


def synthesize(
    out_dir: Path,
    n_per_class: int,
    size: int,
    seed: int,
    workers: int = 0,
    shortcut: str = "none",
    classes=("Normal", "Covid"),
    site: str = "a",
) -> dict[str, int]:
    """Write n_per_class PNGs per class under out_dir/<CLASS>/, in parallel; returns counts per
    class. Each image depends only on (seed, class, number, site): adding a class changes no other.
    Site "b" (an external test site) writes half as many Normal and a quarter as many Covid images
    (another prevalence), 1.5 times the size, never with the shortcut."""
    jobs = []
    counts = {}
    for label, (cls, folder) in enumerate(CLASS_DIRS.items()):
        if cls not in classes:
            continue
        d = Path(out_dir) / folder
        d.mkdir(parents=True, exist_ok=True)
        n = n_per_class if site == "a" else max(2, n_per_class // (2 if cls == "Normal" else 4))
        s, cut = (size, shortcut) if site == "a" else (size * 3 // 2, "none")
        jobs += [(d, cls, label, i, s, seed, cut, site) for i in range(n)]
        counts[cls] = n
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for job in jobs:
            _write_one(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=16))
    return counts
