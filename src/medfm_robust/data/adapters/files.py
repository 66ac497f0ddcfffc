"""Shared file readers of the dataset adapters: image and medical-format readers, mask thresholds, ids
and the folder helpers every publisher layout uses."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.data.registry import Loaded
from medfm_robust.data.shards import binarise_mask
from medfm_robust.errors import DataError
from medfm_robust.io import read_image

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
MEDICAL_EXTENSIONS = (".dcm", ".nii", ".nii.gz")  # read in Hounsfield units / scaled values (read_source)
SOURCE_EXTENSIONS = IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS


def safe_id(text: str) -> str:
    """An image id from a file stem: runs of characters other than ``[A-Za-z0-9._-]`` become ``_``.

    A stem with non-ASCII characters (e.g. Chinese) or none left keeps ids distinct and valid with the
    first 8 hex digits of its SHA-256 appended (``病例_01`` -> ``01_<hash>``; ``图像`` -> ``<hash>``).
    """
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if not text.isascii() or not out.strip("."):
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        out = f"{out}_{digest}" if out.strip(".") else digest
    return out


def warn_orphan_masks(
    masks: Iterable[Path], image_stems: set[str], stem_of: Callable[[Path], str]
) -> list[Path]:
    """Log a warning naming each mask whose image (``stem_of(mask)`` in ``image_stems``) is missing."""
    orphans = [m for m in masks if stem_of(m) not in image_stems]
    for m in orphans:
        log.warning("%s: mask without an image (no image named %s.*); ignored", m, stem_of(m))
    return orphans


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _subdir(root: Path, *names: str) -> Path | None:
    """The first existing folder among ``root/name`` and the doubled ``root/name/name`` (Kaggle zips)."""
    for name in names:
        for cand in (root / name / name, root / name):
            if cand.is_dir():
                return cand
    return None


def _images_in(folder: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    exts = tuple(extensions)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(exts))


def _ext(path: Path) -> str:
    """The file's extension, ``.nii.gz`` counted as one."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


def _stem(path: Path) -> str:
    """The file name without its extension (:func:`_ext`)."""
    return path.name[: len(path.name) - len(_ext(path))]


def read_dicom(path: Path) -> np.ndarray:
    """One DICOM slice: ``pixel_array`` times RescaleSlope plus RescaleIntercept (float64 Hounsfield units
    for CT) when either is set, else the stored integers. Larger values always mean brighter: a
    MONOCHROME1 slice (minimum = white, as many CR/DX radiographs are stored) is inverted over its
    BitsStored range first (:func:`invert_monochrome1`). Multi-frame and palette-colour files are a
    ``DataError``."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        px = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types on bad files (InvalidDicomError, ValueError, ...)
        raise DataError(f"{path}: cannot read DICOM ({exc})") from exc
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames); one slice per file")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise DataError(
            f"{path}: PhotometricInterpretation PALETTE COLOR is not supported; export the slice as RGB "
            "or grayscale"
        )
    if photometric == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", 8 * px.dtype.itemsize))
        px = invert_monochrome1(px, bits, int(getattr(ds, "PixelRepresentation", 0)))
    slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
    if slope != 1.0 or intercept != 0.0:
        return px.astype(np.float64) * slope + intercept
    return px


def invert_monochrome1(stored: np.ndarray, bits_stored: int, pixel_representation: int = 0) -> np.ndarray:
    """MONOCHROME1 stored values (``H x W`` integers, minimum displayed white) as MONOCHROME2 (larger =
    brighter): ``lo + hi - v`` over the range that ``bits_stored`` bits can hold (``[0, 2^b - 1]``, or
    ``[-2^(b-1), 2^(b-1) - 1]`` when ``pixel_representation`` is 1, signed), in the input's dtype. The
    DICOM display pipeline inverts after the modality and VOI transforms; as both are monotone and the
    rescale is affine, inverting the stored values first gives the same order and contrast."""
    bits = int(bits_stored)
    if pixel_representation == 1:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return ((lo + hi) - stored.astype(np.int64)).astype(stored.dtype)


def read_nifti(path: Path) -> np.ndarray:
    """One NIfTI slice (``.nii`` / ``.nii.gz``, singleton axes dropped) with ``scl_slope`` / ``scl_inter``
    applied (nibabel), transposed so that rows follow the second voxel axis (``H x W = j x i``)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ... on bad files
        raise DataError(f"{path}: cannot read NIfTI ({exc})") from exc
    data = np.squeeze(data)
    if data.ndim != 2:
        raise DataError(f"{path}: NIfTI holds shape {data.shape}; one 2-D slice per file is supported")
    return np.ascontiguousarray(data.T)


def read_source(path: Path) -> np.ndarray:
    """A source image or mask: DICOM and NIfTI through their readers (raw values, possibly HU floats),
    everything else through :func:`medfm_robust.io.read_image`."""
    ext = _ext(path).lower()
    if ext in MEDICAL_EXTENSIONS and not path.is_file():
        raise DataError(f"{path}: image file not found")
    if ext == ".dcm":
        return read_dicom(path)
    if ext in (".nii", ".nii.gz"):
        return read_nifti(path)
    return read_image(path)


def _read_mask(path: Path, image_path: Path, threshold: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: mask file not found (for image {image_path})")
    unit = path.suffix.lower() not in JPEG_EXTENSIONS
    mask = read_source(path)
    if mask.dtype.kind == "f" and np.all(np.isfinite(mask)) and np.array_equal(mask, np.rint(mask)):
        mask = mask.astype(np.int64)  # NIfTI / DICOM label images read as floats
    return binarise_mask(mask, threshold, str(path), unit_labels=unit)


def file_loader(image_path: Path, mask_paths: list[Path], threshold: int) -> Callable[[], Loaded]:
    """A loader reading ``image_path`` and the union of its (binarised) masks.

    JPEG masks are thresholded strictly above ``threshold`` (127: compression noise is never
    foreground); lossless masks holding only 0/1 are read as label images.
    """

    def load() -> Loaded:
        image = read_source(image_path)
        if not mask_paths:
            raise DataError(f"{image_path}: no mask file found for this image")
        mask: np.ndarray | None = None
        for mp in mask_paths:
            m = _read_mask(mp, image_path, threshold)
            if m.shape != image.shape[:2]:
                raise DataError(
                    f"{mp}: mask size {m.shape} differs from image {image_path} {image.shape[:2]}"
                )
            mask = m if mask is None else (mask | m)
        assert mask is not None
        return image, mask

    return load


def _threshold(spec: Mapping[str, Any]) -> int:
    return int(spec["mask_threshold"])


def _need(root: Path | None) -> Path:
    if root is None:
        raise DataError("dataset folder not given")
    return root


def find_mask(image: Path, mask_dir: Path, suffix: str) -> list[Path]:
    """The mask of ``image`` in ``mask_dir``: ``<stem><suffix>``; a suffix without an extension tries
    the image's own extension, then the common ones (two matches are an error)."""
    stem = _stem(image)
    if Path(suffix).suffix:
        return [mask_dir / f"{stem}{suffix}"]
    exts = dict.fromkeys([_ext(image), *SOURCE_EXTENSIONS, *(e.upper() for e in SOURCE_EXTENSIONS)])
    found = [mask_dir / f"{stem}{suffix}{e}" for e in exts if (mask_dir / f"{stem}{suffix}{e}").is_file()]
    if len(found) > 1:
        raise DataError(
            f"{image}: several candidate masks {[str(p) for p in found]}; set mask_suffix with an extension"
        )
    return found
