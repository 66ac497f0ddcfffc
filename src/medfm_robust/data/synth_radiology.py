"""Synthetic radiology demo images (MRI, CT, X-ray, ultrasound, angiography): ``size x size`` grayscale
(uint8; CT uint16) and a bool target mask (see :mod:`medfm_robust.data.synth`)."""

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
    smooth_noise,
    soften,
    speckle,
    to_uint8,
    tubes,
)


def mri(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """T1-like axial brain: scalp, skull, grey/white matter folds, ventricles, tumour with oedema,
    bias field and Rician noise."""
    a = rng.uniform(0.36, 0.43) * size
    c = (size / 2 + rng.normal(0, 4), size / 2 + rng.normal(0, 4))
    head = blob(rng, size, c, a, irregularity=0.03, aspect=rng.uniform(0.75, 0.88), angle=rng.normal(0, 0.08))
    d = ndi.distance_transform_edt(head).astype(np.float32) + 1.2 * smooth_noise(rng, size, 3)
    t1, t2, t3 = rng.uniform(0.03, 0.05) * size, rng.uniform(0.02, 0.035) * size, rng.uniform(2, 4)
    brain = d >= t1 + t2 + t3
    depth = np.clip((d - t1 - t2 - t3) / (0.2 * size), 0, 1)
    folds = fractal_noise(rng, size, (2, 4, 7)) + 2.5 * depth
    wm = 1 / (1 + np.exp(-4 * (folds - rng.uniform(0.9, 1.4))))
    img = np.where(head & (d < t1), 0.72 + 0.08 * smooth_noise(rng, size, 2), 0.0).astype(np.float32)
    img = np.where((d >= t1) & (d < t1 + t2), 0.07, img)
    img = np.where((d >= t1 + t2) & ~brain, 0.15, img)
    gm, wm_level = rng.uniform(0.4, 0.48), rng.uniform(0.6, 0.68)
    img = np.where(brain, gm + (wm_level - gm) * wm + 0.02 * smooth_noise(rng, size, 1.5), img)
    for side in (-1, 1):  # lateral ventricles
        vc = (c[0] + rng.normal(0, 3), c[1] + side * rng.uniform(0.04, 0.07) * size)
        vent = blob(
            rng,
            size,
            vc,
            rng.uniform(0.07, 0.12) * size,
            irregularity=0.2,
            aspect=0.35,
            angle=side * rng.uniform(0.1, 0.35),
        )
        img = np.where(vent & brain, 0.14 + 0.05 * img, img)
    r = rng.uniform(0.03, 0.14) * size
    tc = point_inside(rng, brain, r * 0.9)
    mask = blob(rng, size, tc, r, irregularity=rng.uniform(0.1, 0.35), roughness=rng.uniform(0, 2)) & brain
    oedema = soften(blob(rng, size, tc, r * rng.uniform(1.3, 2.0), irregularity=0.35) & brain, 4)
    img -= rng.uniform(0.03, 0.12) * oedema
    kind = rng.choice(["ring", "solid", "hypo"])
    m_soft = soften(mask, rng.uniform(0.6, 2.0))
    if kind == "ring":
        core = ndi.binary_erosion(mask, iterations=int(rng.integers(2, 6)))
        level = np.where(core, rng.uniform(0.18, 0.3), rng.uniform(0.8, 0.95))
        level = ndi.gaussian_filter(level.astype(np.float32), 1.0)
    elif kind == "solid":
        level = rng.uniform(0.7, 0.95) + 0.05 * smooth_noise(rng, size, 2)
    else:
        level = rng.uniform(0.22, 0.34) + 0.03 * smooth_noise(rng, size, 2)
    img = img * (1 - m_soft) + level * m_soft
    img *= 1 + 0.12 * smooth_noise(rng, size, 0.25 * size)
    sigma = rng.uniform(0.01, 0.04)
    img = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    return to_uint8(img), mask


def ct(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Abdominal CT slice in Hounsfield units: fat, muscle, liver with a hypo- or hyperdense lesion, spleen,
    kidneys, aorta, vertebra, bowel gas, correlated noise.

    Stored as uint16 ``(HU + 1024) * 16``: the 12-bit range [0, 4095] left-aligned in 16 bits, so that the
    image spans the dtype's range, which is the SSIM ``data_range`` of the perturbation calibration (12-bit
    values in the low bits would leave SSIM blind to most changes).
    """
    hu, liver = _ct_anatomy(rng, size)
    s = float(size)
    r = rng.uniform(0.02, 0.08) * s
    mask = blob(rng, size, point_inside(rng, liver, r), r, irregularity=rng.uniform(0.05, 0.3), roughness=1.0)
    mask &= liver
    delta = -rng.uniform(12, 60) if rng.random() < 0.8 else rng.uniform(15, 50)
    hu += delta * soften(mask, rng.uniform(0.6, 2.0)) * (1 + 0.1 * smooth_noise(rng, size, 2))
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.6) * 2.2
    hu += rng.uniform(6, 20) * noise
    return (np.clip(np.rint(hu + 1024), 0, 4095) * 16).astype(np.uint16), mask


def _ct_anatomy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The lesion-free abdominal slice of :func:`ct` in HU (float32 ``size x size``) and its liver mask."""
    s = float(size)
    ry, cy, cx = rng.uniform(0.3, 0.35) * s, s / 2 + rng.normal(0, 4), s / 2 + rng.normal(0, 4)
    body = blob(
        rng, size, (cy, cx), ry, irregularity=0.04, aspect=min(rng.uniform(1.25, 1.45), 0.45 * s / ry)
    )
    d = ndi.distance_transform_edt(body).astype(np.float32)
    fat_t = rng.uniform(6, 18) * s / 256
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = -100 + 15 * smooth_noise(rng, size, 3)[body]
    muscle = body & (d >= fat_t) & (d < fat_t + 5 * s / 256)
    hu[muscle] = 50
    inner = body & (d >= fat_t + 5 * s / 256)
    tex = fractal_noise(rng, size, (2, 5, 10))
    hu[inner] = np.where(tex[inner] > 1.0, -90, 35 + 12 * tex[inner])
    contrast = rng.random() < 0.6
    liver = (
        blob(
            rng,
            size,
            (cy - 0.05 * s, cx - 0.2 * s),
            rng.uniform(0.17, 0.22) * s,
            irregularity=0.15,
            aspect=1.1,
            roughness=1.5,
        )
        & inner
    )
    liver_hu = rng.uniform(90, 120) if contrast else rng.uniform(50, 70)
    hu[liver] = liver_hu + 6 * smooth_noise(rng, size, 2)[liver]
    spleen = (
        blob(rng, size, (cy + 0.08 * s, cx + 0.28 * s), rng.uniform(0.05, 0.08) * s, irregularity=0.2) & inner
    )
    hu[spleen & ~liver] = liver_hu - 10
    for side in (-1, 1):
        kid = blob(rng, size, (cy + 0.18 * s, cx + side * 0.17 * s), 0.05 * s, aspect=0.65, angle=side * 0.5)
        hu[kid & inner & ~liver] = rng.uniform(150, 200) if contrast else 35
    vert = blob(rng, size, (cy + 0.22 * s, cx), 0.065 * s, irregularity=0.05)
    hu[vert] = rng.uniform(250, 450) + 80 * smooth_noise(rng, size, 1.5)[vert]
    hu[vert & ~ndi.binary_erosion(vert, iterations=2)] = 800
    hu[blob(rng, size, (cy + 0.31 * s, cx), 0.025 * s, irregularity=0.05)] = 10
    hu[blob(rng, size, (cy + 0.1 * s, cx - 0.05 * s), 0.035 * s, irregularity=0.02)] = 220 if contrast else 40
    free = inner & ~liver & ~spleen & ~vert
    for _ in range(int(rng.integers(2, 7))):  # bowel gas
        hu[
            blob(rng, size, point_inside(rng, free, 8), rng.uniform(3, 10) * s / 256, irregularity=0.3) & free
        ] = -900
    return hu, liver


def xray(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PA chest radiograph: lungs, heart shadow, ribs and clavicles over a faint nodule or mass."""
    s = float(size)
    body = blob(rng, size, (0.56 * s, 0.5 * s), 0.52 * s, irregularity=0.03, aspect=0.85)
    img = np.where(body, rng.uniform(0.5, 0.62), rng.uniform(0.04, 0.12)).astype(np.float32)
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lc = (0.47 * s + rng.normal(0, 4), 0.5 * s + side * rng.uniform(0.17, 0.21) * s)
        lungs |= blob(
            rng, size, lc, rng.uniform(0.27, 0.32) * s, irregularity=0.08, aspect=rng.uniform(0.42, 0.52)
        )
    lung_level = rng.uniform(0.18, 0.3)
    img = img * (1 - soften(lungs, 3)) + (lung_level + 0.04 * fractal_noise(rng, size, (2, 6))) * soften(
        lungs, 3
    )
    heart = blob(rng, size, (0.62 * s, 0.53 * s), rng.uniform(0.14, 0.18) * s, irregularity=0.08, aspect=1.25)
    img += 0.28 * soften(heart & lungs, 4)
    img += 0.12 * soften(np.abs(grid(size)[1] - s / 2) < 0.05 * s, 3)  # spine / mediastinum
    paths, widths = [], []
    for side in (-1, 1):
        for k in range(int(rng.integers(8, 11))):
            y0 = (0.2 + 0.07 * k) * s + rng.normal(0, 2)
            x = np.linspace(0.5 * s + side * 0.05 * s, 0.5 * s + side * 0.45 * s, int(0.4 * s))
            t = np.linspace(0, 1, x.size)
            y = y0 - 0.04 * s * np.sin(PI * t) + rng.uniform(0.06, 0.1) * s * t**2
            paths.append(np.stack([y, x], 1).astype(np.float32))
            widths.append(np.full(x.size, rng.uniform(2.5, 4.0) * s / 256, np.float32))
        paths.append(
            random_path(
                rng, (0.14 * s, 0.5 * s + side * 0.04 * s), PI / 2 - side * (PI / 2 - 0.15), 0.4 * s, 0.01
            )
        )
        widths.append(np.full(len(paths[-1]), 4 * s / 256, np.float32))
    ribs, _ = tubes(size, paths, widths)
    img += rng.uniform(0.06, 0.14) * ribs * body
    r = rng.uniform(0.02, 0.09) * s
    mask = blob(
        rng, size, point_inside(rng, lungs, r), r, irregularity=rng.uniform(0.05, 0.35), roughness=1.0
    )
    mask &= lungs
    img += rng.uniform(0.08, 0.3) * soften(mask, rng.uniform(1, 4)) * (1 + 0.15 * smooth_noise(rng, size, 2))
    img = ndi.gaussian_filter(img, 0.7) ** rng.uniform(0.8, 1.25)
    img += rng.normal(0, rng.uniform(0.01, 0.025), img.shape)
    return to_uint8(img), mask


def ultrasound(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """B-mode breast ultrasound (sector or linear probe): layered tissue, a hypoechoic lesion with
    posterior enhancement or shadowing, anechoic cysts, multiplicative speckle and log compression."""
    yy, xx = grid(size)
    s = float(size)
    if rng.random() < 0.5:
        apex = -0.1 * s
        depth = np.hypot(yy - apex, xx - s / 2) - 0.12 * s
        field = (
            (depth > 0) & (np.abs(np.arctan2(xx - s / 2, yy - apex)) < rng.uniform(0.45, 0.7)) & (depth < s)
        )
    else:
        depth = yy - 0.04 * s
        field = depth > 0
    echo = 0.45 + 0.15 * smooth_noise(rng, size, 3, anisotropy=4)
    skin = rng.uniform(0.02, 0.05) * s
    echo += 0.45 * np.exp(-(((depth - skin) / 2) ** 2))
    fat_end = skin + rng.uniform(0.1, 0.25) * s + 6 * smooth_noise(rng, size, 12, anisotropy=3)
    echo -= 0.18 * ((depth > skin + 3) & (depth < fat_end))
    r = rng.uniform(0.05, 0.17) * s
    ly, lx = rng.uniform(0.3, 0.7) * s, s / 2 + rng.normal(0, 0.12 * s)
    mask = (
        blob(
            rng,
            size,
            (ly, lx),
            r,
            irregularity=rng.uniform(0.05, 0.45),
            aspect=rng.uniform(1.0, 1.7),
            roughness=rng.uniform(0, 2.5),
        )
        & field
    )
    behind = soften((np.abs(xx - lx) < 0.8 * r) & (yy > ly), 4)
    echo *= 1 + rng.choice([-0.45, 0.35]) * rng.uniform(0.4, 1.0) * behind
    near = ndi.binary_dilation(mask, iterations=8)
    for _ in range(int(rng.integers(0, 3))):
        cyst = blob(rng, size, point_inside(rng, field & ~near, 10), rng.uniform(4, 10), aspect=1.4) & ~near
        echo = np.where(cyst, 0.05, echo)
    inside = rng.uniform(0.06, 0.25) * (1 + 0.3 * smooth_noise(rng, size, 2))
    m_soft = soften(mask, rng.uniform(0.8, 2.5))
    echo = echo * (1 - m_soft) + inside * m_soft
    echo = np.clip(echo, 0.01, None) * np.exp(-np.clip(depth, 0, None) / (rng.uniform(1.0, 2.0) * s))
    img = echo * speckle(rng, size, (0.7, 1.8))
    img = np.log1p(6 * img) / np.log1p(6 * 1.6)
    img = img * field
    return to_uint8(img), mask


def angiography(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """X-ray coronary angiogram: contrast-filled vessel tree over soft anatomy and a catheter; the
    target is the stenotic segment of the main vessel (as analysed in quantitative coronary angiography),
    the rest of the tree is a distractor running through the box."""
    s = float(size)
    img = rng.uniform(0.55, 0.75) + 0.08 * fractal_noise(rng, size, (6, 16, 40))
    img += 0.06 * soften(np.abs(grid(size)[1] - rng.uniform(0.3, 0.7) * s) < 0.08 * s, 6)
    start, heading = edge_start(rng, size)
    main = random_path(rng, start, heading, rng.uniform(0.7, 1.1) * s, 0.02)
    w = np.linspace(rng.uniform(3.5, 6.0), rng.uniform(1.8, 2.8), len(main)) * s / 256
    margin = 0.08 * s
    inside = np.flatnonzero(np.all((main >= margin) & (main <= s - 1 - margin), axis=1))
    t0 = int(rng.choice(inside)) if inside.size else len(main) // 2
    span = int(rng.integers(6, 14))
    dip = np.exp(-(((np.arange(len(main)) - t0) / span) ** 2))
    w = (w * (1 - rng.uniform(0.35, 0.7) * dip)).astype(np.float32)
    paths, widths = [], []
    for _ in range(int(rng.integers(4, 10))):
        k = int(rng.integers(len(main) // 8, len(main) - 5))
        ang = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
        b = random_path(rng, tuple(main[k]), ang, rng.uniform(40, 140), 0.03)
        paths.append(b)
        widths.append(np.linspace(min(w[k] * 0.7, 2.5), 0.7, len(b)).astype(np.float32))
        if rng.random() < 0.5:
            q = b[int(rng.integers(len(b) // 3, len(b)))]
            sb = random_path(rng, tuple(q), ang + rng.normal(0, 0.8), rng.uniform(20, 60), 0.03)
            paths.append(sb)
            widths.append(np.linspace(1.0, 0.5, len(sb)).astype(np.float32))
    cath = random_path(rng, tuple(main[0]), heading + PI + rng.normal(0, 0.2), 0.6 * s, 0.01)
    paths.append(cath)
    widths.append(np.full(len(cath), 1.3, np.float32))
    main_prof, main_mask = tubes(size, [main], [w])
    half = int(rng.uniform(18, 40) * s / 256)
    lo, hi = max(t0 - half, 0), min(t0 + half + 1, len(main))
    mask = tubes(size, [main[lo:hi]], [w[lo:hi]])[1] & main_mask
    other, _ = tubes(size, paths, widths)
    prof = np.maximum(main_prof, 0.8 * other)
    img = img * (1 - rng.uniform(0.35, 0.65) * prof)
    img = ndi.gaussian_filter(img, 0.8) + rng.normal(0, rng.uniform(0.015, 0.03), img.shape)
    return to_uint8(img), mask
