"""Tiny copies of every real dataset's published layout (for tests and dry runs of config/paper.yaml).

:func:`build_fixture_resources` writes, under a ``resources/`` folder, a few synthetic images per dataset
in exactly the file layout, formats and naming the publishers use (JPEG images and masks, MATLAB v7.3
files, BUSI's ``name (N)_mask_k.png``, ...), plus empty placeholders for the checkpoints and VLM folders
so that existence checks pass in dry runs. Never point it at the repository's own ``resources/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medfm_robust.data.synth import GENERATORS
from medfm_robust.seeding import rng_for

# the official checkpoints of the segmentation model registry (tests/test_seg_registry.py checks it)
CHECKPOINTS = ("medsam_vit_b.pth", "sam-med2d_b.pth", "sam_vit_b_01ec64.pth", "lite_medsam.pth")
VLM_MODELS = ("medgemma-4b-it", "medgemma-1.5-4b-it", "llava-med-v1.5-mistral-7b")
VLM_DATA = ("OmniMedVQA", "ROCOv2", "MeCoVQA")

# dataset key in config/paper.yaml -> folder under resources/datasets/
PAPER_FOLDERS = {
    "isic2016": "ISIC2016",
    "kvasir_seg": "Kvasir-SEG",
    "brain_tumor": "brain_tumor_figshare",
    "glaucoma_disc": "SMDG",
    "glaucoma_cup": "SMDG",
    "busi": "BUSI",
}


def fixture_sample(
    modality: str, key: str, shape: tuple[int, int] = (72, 96), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic image and mask of ``modality`` resized to ``shape`` (H, W), deterministic in key."""
    image, mask = GENERATORS[modality](rng_for("fixture", modality, key, global_seed=seed), 96)
    h, w = shape
    if image.dtype == np.uint16:
        image = (image >> 4).astype(np.uint8)
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    msk = (
        np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    )
    return img, msk


def save(path: Path, array: np.ndarray, quality: int | None = None) -> Path:
    """Save an array as PNG, or JPEG when ``path`` ends in .jpg (``quality`` default 90)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, format="JPEG", quality=quality or 90)
    else:
        pil.save(path, format="PNG")
    return path


def write_matlab_v73(
    path: Path, image: np.ndarray, mask: np.ndarray, label: int = 1, pid: str = "100360"
) -> Path:
    """Write a figshare-1512427-style MATLAB v7.3 file: an HDF5 file with a 512-byte MATLAB header and
    group ``cjdata`` holding ``image`` (int16), ``tumorMask`` (logical as uint8), ``label``, ``PID`` and
    ``tumorBorder``, all stored column-major (transposed), as MATLAB does."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as fh:
        g = fh.create_group("cjdata")
        for name, data, cls in (
            ("label", np.array([[float(label)]]), "double"),
            ("PID", np.array([[ord(c)] for c in pid], dtype=np.uint16), "char"),
            ("image", np.ascontiguousarray(image.T).astype(np.int16), "int16"),
            ("tumorBorder", np.zeros((1, 4)), "double"),
            ("tumorMask", np.ascontiguousarray(mask.T).astype(np.uint8), "logical"),
        ):
            ds = g.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2015 HDF5 schema 1.00 ."
    )
    block = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(block.ljust(512, b"\x00"))
    return path


def _isic(root: Path, n: int) -> None:
    for part, offset in (("Training", 0), ("Test", 100)):
        for i in range(n if part == "Training" else max(n // 2, 1)):
            sid = f"ISIC_{offset + i:07d}"
            img, msk = fixture_sample("dermoscopy", sid, (72 + 4 * i, 96))
            save(root / f"ISBI2016_ISIC_Part1_{part}_Data" / f"{sid}.jpg", img)
            save(
                root / f"ISBI2016_ISIC_Part1_{part}_GroundTruth" / f"{sid}_Segmentation.png",
                msk.astype(np.uint8) * 255,
            )


def _kvasir(root: Path, n: int) -> None:
    for i in range(n):
        sid = f"cju{i:04d}kvasirfixture"
        img, msk = fixture_sample("endoscopy", sid, (80, 88))
        save(root / "Kvasir-SEG" / "images" / f"{sid}.jpg", img)
        save(root / "Kvasir-SEG" / "masks" / f"{sid}.jpg", msk.astype(np.uint8) * 255, quality=75)


def _brain(root: Path, n: int) -> None:
    for i in range(1, n + 1):
        img, msk = fixture_sample("mri", str(i), (60, 76))
        image16 = img.astype(np.int16) * 12  # a 12-bit-like MRI range beyond 8 bits
        folder = "brainTumorDataPublic_1-766" if i <= max(n // 2, 1) else "brainTumorDataPublic_767-1532"
        # two slices per patient, as in the real set (patient-level splits need several patients)
        pid = str(100360 + (i - 1) // 2)
        write_matlab_v73(root / folder / f"{i}.mat", image16, msk, label=1 + i % 3, pid=pid)
    (root / "cvind.mat").write_bytes(b"not an image file: cross-validation indices")


def _smdg(root: Path, n: int) -> None:
    for i in range(n):
        sid = f"DRISHTI-GS1-TRAIN-{i + 1}"
        img, disc = fixture_sample("fundus", sid, (96, 96))
        ys, xs = np.nonzero(disc)
        cy, cx = (ys.mean(), xs.mean()) if ys.size else (48, 48)
        yy, xx = np.mgrid[0:96, 0:96]
        cup = disc & (np.hypot(yy - cy, xx - cx) < 0.5 * np.sqrt(max(disc.sum(), 1) / np.pi))
        save(root / "full-fundus" / f"{sid}.png", img)
        save(root / "optic-disc" / f"{sid}.png", disc.astype(np.uint8) * 255)
        if i % 4 != 3:  # not every SMDG image has a cup annotation
            save(root / "optic-cup" / f"{sid}.png", cup.astype(np.uint8) * 255)
    save(root / "full-fundus" / "BEH-999.png", fixture_sample("fundus", "BEH-999", (96, 96))[0])


def _busi(root: Path, n: int) -> None:
    base = root / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        for i in range(1, n + 1):
            img, msk = fixture_sample("ultrasound", f"{cls}{i}", (70, 90))
            rgb = np.repeat(img[:, :, None], 3, axis=2)  # BUSI PNGs are stored as RGB
            save(base / cls / f"{cls} ({i}).png", rgb)
            if cls == "normal":
                save(base / cls / f"{cls} ({i})_mask.png", np.zeros(img.shape, np.uint8))
                continue
            if i % 2 == 1:  # two annotated regions, as BUSI's `_mask.png` + `_mask_1.png`
                half = msk.copy()
                half[:, msk.shape[1] // 2 :] = False
                save(base / cls / f"{cls} ({i})_mask.png", half.astype(np.uint8) * 255)
                save(base / cls / f"{cls} ({i})_mask_1.png", (msk & ~half).astype(np.uint8) * 255)
            else:
                save(base / cls / f"{cls} ({i})_mask.png", msk.astype(np.uint8) * 255)


def build_model_placeholders(resources: Path) -> None:
    """Empty checkpoint files and VLM folders (existence checks in dry runs only; not loadable)."""
    for name in CHECKPOINTS:
        p = resources / "checkpoints" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    for name in VLM_MODELS:
        d = resources / "vlm" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}\n")
    for name in VLM_DATA:
        (resources / "vlm_data" / name).mkdir(parents=True, exist_ok=True)


def build_fixture_resources(root: str | Path, n: int = 4, *, with_models: bool = True) -> Path:
    """Write a fixture ``resources/`` tree under ``root`` (``root`` is the resources folder itself).

    Layouts (``n`` images per part, deterministic): ``datasets/ISIC2016``, ``datasets/Kvasir-SEG``,
    ``datasets/brain_tumor_figshare``, ``datasets/SMDG``, ``datasets/BUSI`` as in config/paper.yaml, and
    (``with_models``) empty placeholders for the checkpoints and VLM folders. Returns ``root``.
    """
    res = Path(root)
    ds = res / "datasets"
    _isic(ds / PAPER_FOLDERS["isic2016"], n)
    _kvasir(ds / PAPER_FOLDERS["kvasir_seg"], n)
    _brain(ds / PAPER_FOLDERS["brain_tumor"], n)
    _smdg(ds / PAPER_FOLDERS["glaucoma_disc"], n)
    _busi(ds / PAPER_FOLDERS["busi"], n)
    if with_models:
        build_model_placeholders(res)
    return res
