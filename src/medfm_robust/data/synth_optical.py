"""Synthetic photographic demo images (dermoscopy, endoscopy, fundus, pathology): ``size x size x 3``
uint8 RGB and a bool target mask (see :mod:`medfm_robust.data.synth`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medfm_robust.data.synth_tools import (
    PI,
    blob,
    edge_start,
    fractal_noise,
    grid,
    point_inside,
    random_path,
    scatter_discs,
    smooth_noise,
    soften,
    to_uint8,
    tubes,
    vignette,
)


def dermoscopy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Skin with pores and redness, an irregular pigmented lesion, hairs, small moles, scope vignette."""
    yy, xx = grid(size)
    skin = np.array([0.93, 0.72, 0.64]) * rng.uniform(0.75, 1.02) + rng.normal(0, 0.025, 3)
    img = skin * (1 + 0.05 * fractal_noise(rng, size, (2, 4, 8, 24))[..., None])
    img *= 1 + 0.02 * smooth_noise(rng, size, 0.8)[..., None]
    img[..., 1:] *= (1 - 0.05 * np.clip(smooth_noise(rng, size, 18), 0, None))[..., None]
    c = (size / 2 + rng.normal(0, 0.08 * size), size / 2 + rng.normal(0, 0.08 * size))
    mask = blob(
        rng,
        size,
        c,
        rng.uniform(0.08, 0.3) * size,
        irregularity=rng.uniform(0.1, 0.45),
        aspect=rng.uniform(0.7, 1.4),
        angle=rng.uniform(0, PI),
        roughness=rng.uniform(0, 3),
    )
    inner = fractal_noise(rng, size, (1, 3, 8))
    brown = np.array([0.45, 0.28, 0.2]) * rng.uniform(0.55, 1.25)
    lesion = brown * (1 + 0.25 * inner[..., None])
    if rng.random() < 0.4:  # blue-grey veil
        veil = soften(
            blob(rng, size, c, rng.uniform(0.2, 0.6) * np.sqrt(mask.sum() / PI), irregularity=0.3), 3
        )
        lesion = lesion * (1 - 0.5 * veil[..., None]) + np.array([0.35, 0.38, 0.48]) * 0.5 * veil[..., None]
    alpha = soften(mask, rng.uniform(0.8, 3.5)) * rng.uniform(0.4, 0.95) * np.clip(1 + 0.2 * inner, 0.5, 1.2)
    img = img * (1 - alpha[..., None]) + lesion * np.clip(alpha, 0, 1)[..., None]
    near = ndi.binary_dilation(mask, iterations=6)
    for _ in range(int(rng.integers(0, 4))):  # small moles outside the lesion
        mole = blob(rng, size, point_inside(rng, ~near, 10), rng.uniform(2.5, 7), irregularity=0.1)
        img *= 1 - 0.5 * soften(mole, 1.0)[..., None]
    paths = []
    for _ in range(int(rng.integers(0, 14))):  # hairs
        start, heading = edge_start(rng, size)
        paths.append(random_path(rng, start, heading, rng.uniform(60, 1.3 * size), 0.03))
    if paths:
        prof, _ = tubes(size, paths, [np.full(len(p), rng.uniform(0.5, 1.3), np.float32) for p in paths])
        img *= (1 - 0.75 * prof)[..., None]
    img *= vignette(size, rng.uniform(0.1, 0.4))[..., None]
    if rng.random() < 0.5:  # dermatoscope's circular field of view
        inside = np.hypot(yy - size / 2, xx - size / 2) < rng.uniform(0.6, 0.75) * size
        img *= soften(inside, 3)[..., None]
        mask &= inside
    img += rng.normal(0, rng.uniform(0.006, 0.02), img.shape)
    return to_uint8(img), mask


def endoscopy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Colonoscopy frame: mucosal folds and vessels, dark lumen, a shaded polyp, specular highlights."""
    yy, xx = grid(size)
    s = float(size)
    base = np.array([0.85, 0.45, 0.38]) * rng.uniform(0.85, 1.05) + rng.normal(0, 0.02, 3)
    th = rng.uniform(0, PI)
    proj = np.cos(th) * xx + np.sin(th) * yy
    folds = np.sin(2 * PI * proj / rng.uniform(25, 60) + 2.5 * smooth_noise(rng, size, 20))
    img = base * (1 + 0.12 * folds + 0.05 * fractal_noise(rng, size, (2, 6, 16)))[..., None]
    paths = [
        random_path(rng, *edge_start(rng, size), rng.uniform(60, 200), 0.06)
        for _ in range(int(rng.integers(4, 12)))
    ]
    vess, _ = tubes(size, paths, [np.linspace(1.6, 0.5, len(p)).astype(np.float32) for p in paths])
    img[..., 1:] *= (1 - 0.3 * vess)[..., None]
    r = rng.uniform(0.08, 0.22) * s
    pc = (rng.uniform(0.25, 0.75) * s, rng.uniform(0.25, 0.75) * s)
    mask = blob(
        rng, size, pc, r, irregularity=rng.uniform(0.05, 0.25), aspect=rng.uniform(0.8, 1.3), roughness=1.0
    )
    lumen_c = point_inside(rng, ~ndi.binary_dilation(mask, iterations=int(0.15 * s)), 0)
    lumen = soften(blob(rng, size, lumen_c, rng.uniform(0.08, 0.18) * s, irregularity=0.2), 0.06 * s)
    img *= (1 - 0.85 * lumen)[..., None]
    h = np.sqrt(np.clip(ndi.distance_transform_edt(mask) / max(r, 1.0), 0, 1)).astype(np.float32)
    gy, gx = np.gradient(ndi.gaussian_filter(h, 2))
    light = 1 + 6 * (gy * np.sin(th) + gx * np.cos(th)) + 0.15 * h
    tint = np.array([rng.uniform(0.95, 1.15), rng.uniform(0.85, 1.12), rng.uniform(0.85, 1.1)])
    polyp = img * tint * light[..., None]
    ms = soften(mask, rng.uniform(0.8, 2.5))[..., None] * rng.uniform(0.6, 1.0)
    img = img * (1 - ms) + polyp * ms
    img *= (1 - 0.25 * soften(ndi.binary_dilation(mask, iterations=3) & ~mask, 1.5))[..., None]
    n = int(rng.integers(3, 16))
    spots = np.concatenate([rng.uniform(0, s, (n, 2)), [point_inside(rng, mask) for _ in range(2)]])
    prof, _ = scatter_discs(
        size, spots.astype(np.float32), rng.uniform(0.8, 3.5, len(spots)).astype(np.float32)
    )
    img = img * (1 - prof[..., None]) + 1.05 * prof[..., None]
    img *= vignette(size, rng.uniform(0.3, 0.6), (rng.uniform(0.3, 0.7) * s, rng.uniform(0.3, 0.7) * s))[
        ..., None
    ]
    inside = np.hypot(yy - s / 2, xx - s / 2) < rng.uniform(0.6, 0.75) * s
    img *= inside[..., None]
    img += rng.normal(0, 0.01, img.shape)
    return to_uint8(img), mask & inside


def fundus(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour fundus photograph: field-of-view disc, choroidal texture, macula, vessel arcades,
    exudates and haemorrhages; the target is the optic disc (its cup is a distractor)."""
    yy, xx = grid(size)
    s = float(size)
    fov = np.hypot(yy - s / 2, xx - s / 2) < rng.uniform(0.44, 0.49) * s
    base = np.array([0.85, 0.35, 0.12]) * rng.uniform(0.7, 1.05) + rng.normal(0, 0.02, 3)
    img = base * (1 + 0.06 * fractal_noise(rng, size, (2, 5, 12)))[..., None]
    img *= vignette(size, rng.uniform(0.25, 0.5))[..., None]
    side = rng.choice([-1.0, 1.0])
    dc = (s / 2 + rng.normal(0, 0.05 * s), s / 2 + side * rng.uniform(0.18, 0.26) * s)
    dr = rng.uniform(0.055, 0.09) * s
    mask = blob(rng, size, dc, dr, irregularity=0.06, aspect=rng.uniform(0.82, 1.0), roughness=0.7)
    mac = soften(blob(rng, size, (dc[0] + rng.normal(0, 4), dc[1] - side * 0.3 * s), 0.07 * s), 8)
    img *= (1 - 0.3 * mac)[..., None]
    disc_col = np.array([1.0, 0.85, 0.55]) * rng.uniform(0.85, 1.05)
    ds = soften(mask, rng.uniform(1.5, 3.5)) * rng.uniform(0.5, 0.95)
    img = img * (1 - ds[..., None]) + disc_col * ds[..., None]
    cup = soften(blob(rng, size, dc, dr * rng.uniform(0.3, 0.7), irregularity=0.1), 2) * 0.5
    img = img * (1 - cup[..., None]) + np.array([1.0, 0.95, 0.85]) * cup[..., None]
    paths, widths = [], []
    toward = 0.0 if side < 0 else PI  # heading from the disc towards the macula
    for k, (ang, bend) in enumerate(((-0.7, -1), (0.7, 1), (PI - 0.6, 1), (PI + 0.6, -1))):
        heading = toward + ang + rng.normal(0, 0.12)
        turn = bend * (1 if side < 0 else -1) * rng.uniform(0.004, 0.009) * 256 / s
        p = random_path(rng, dc, heading, rng.uniform(0.4, 0.8) * s, 0.015, drift=turn)
        paths.append(p)
        widths.append(np.linspace(2.8 if k < 2 else 2.0, 0.8, len(p)).astype(np.float32) * s / 256)
        for _ in range(int(rng.integers(1, 3))):
            q = p[int(rng.integers(len(p) // 4, len(p)))]
            b = random_path(
                rng,
                tuple(q),
                heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                rng.uniform(20, 80),
                0.02,
            )
            paths.append(b)
            widths.append(np.linspace(1.4, 0.5, len(b)).astype(np.float32) * s / 256)
    prof, _ = tubes(size, paths, widths)
    img *= 1 - prof[..., None] * np.array([0.35, 0.6, 0.6])
    for _ in range(int(rng.integers(0, 10))):
        ex = blob(rng, size, point_inside(rng, fov & ~mask, 0), rng.uniform(1, 4), irregularity=0.3)
        img = np.where(ex[..., None], np.array([0.95, 0.85, 0.4]), img)
    for _ in range(int(rng.integers(0, 6))):
        hm = soften(
            blob(rng, size, point_inside(rng, fov & ~mask, 0), rng.uniform(2, 6), irregularity=0.3), 1
        )
        img *= 1 - 0.5 * hm[..., None]
    img += rng.normal(0, 0.01, img.shape)
    img *= soften(fov, 1.5)[..., None]
    return to_uint8(img), mask & fov


def pathology(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """H&E histology: fibrous eosin stroma, fat/lumen spaces, scattered nuclei and a tumour nest of
    crowded, larger, darker nuclei (the target)."""
    s = float(size)
    pink = np.array([0.93, 0.62, 0.75]) * rng.uniform(0.9, 1.05) + rng.normal(0, 0.02, 3)
    fib = smooth_noise(rng, size, 1.2, anisotropy=5)
    if rng.random() < 0.5:
        fib = fib.T
    img = pink * (1 + 0.08 * fib + 0.04 * fractal_noise(rng, size, (3, 10)))[..., None]
    mask = blob(
        rng,
        size,
        (rng.uniform(0.3, 0.7) * s, rng.uniform(0.3, 0.7) * s),
        rng.uniform(0.12, 0.3) * s,
        irregularity=rng.uniform(0.15, 0.4),
        roughness=2.0,
    )
    purple = soften(mask, 4) * rng.uniform(0.1, 0.3)
    img = img * (1 - purple[..., None]) + np.array([0.75, 0.5, 0.75]) * purple[..., None]
    spaces = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 7))):
        spaces |= blob(
            rng, size, tuple(rng.uniform(0, s, 2)), rng.uniform(5, 22) * s / 256, irregularity=0.25
        )
    img = np.where(spaces[..., None], np.array([0.97, 0.94, 0.97]), img)
    n_s = int(rng.uniform(120, 260) * (s / 256) ** 2)
    stroma = rng.uniform(0, s, (n_s, 2))
    ys, xs = np.nonzero(mask)
    n_t = int(ys.size * rng.uniform(0.012, 0.025))
    pick = rng.integers(0, ys.size, n_t)
    tumour = np.stack([ys[pick], xs[pick]], 1) + rng.uniform(-0.5, 0.5, (n_t, 2))
    centers = np.concatenate([stroma, tumour]).astype(np.float32)
    radii = (
        np.concatenate([rng.uniform(1.6, 3.0, n_s), rng.uniform(2.8, 5.0, n_t)]).astype(np.float32) * s / 256
    )
    aspect = np.concatenate([rng.uniform(1.0, 2.2, n_s), rng.uniform(0.8, 1.4, n_t)]).astype(np.float32)
    dark = np.concatenate([rng.uniform(0.55, 0.85, n_s), rng.uniform(0.75, 1.0, n_t)])
    prof, idx = scatter_discs(size, centers, radii, aspect)
    a = (0.9 * prof * np.where(idx >= 0, dark[np.maximum(idx, 0)], 0))[..., None]
    a = a * (1 + 0.15 * smooth_noise(rng, size, 0.7))[..., None]
    hema = np.array([0.3, 0.18, 0.5]) * rng.uniform(0.85, 1.15)
    img = img * (1 - a) + hema * a
    img = ndi.gaussian_filter(img, (0.6, 0.6, 0)) + rng.normal(0, 0.012, img.shape)
    return to_uint8(img), mask & ~spaces
