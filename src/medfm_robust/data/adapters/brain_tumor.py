"""Figshare Brain Tumor (Cheng et al., MRI): MATLAB v7.3 files carrying image, tumour mask and patient id."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.data.adapters.files import (
    _need,
    _rel,
    safe_id,
)
from medfm_robust.data.registry import Item, Loaded, register
from medfm_robust.errors import DataError

log = logging.getLogger(__name__)


def _to_uint(image: np.ndarray, path: Path) -> np.ndarray:
    """MATLAB image -> uint8 (kept) or uint16 (integers clipped to [0, 65535])."""
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return image
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or not np.array_equal(image, np.rint(image)):
            raise DataError(f"{path}: cjdata.image holds non-integer values")
    elif not np.issubdtype(image.dtype, np.integer):
        raise DataError(f"{path}: cjdata.image has unsupported dtype {image.dtype}")
    negative = int((image < 0).sum())
    if negative:
        log.warning("%s: %d negative pixel values clipped to 0", path, negative)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _read_mat_fields(path: Path) -> dict[str, np.ndarray]:
    """``cjdata.image`` and ``cjdata.tumorMask`` as ``H x W`` arrays from a v7.3 (HDF5, via h5py, arrays
    transposed back from MATLAB's column-major order) or an older v5 ``.mat`` file (via scipy)."""
    import h5py

    if not h5py.is_hdf5(path):
        from scipy.io import loadmat

        try:
            mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        except Exception as exc:  # scipy raises many types (MatReadError, IndexError, ...) on bad files
            raise DataError(f"{path}: cannot read MATLAB file ({exc})") from exc
        if "cjdata" not in mat:
            raise DataError(f"{path}: variable cjdata not found")
        out = {}
        for key in ("image", "tumorMask"):
            if not hasattr(mat["cjdata"], key):
                raise DataError(f"{path}: field cjdata.{key} not found")
            out[key] = np.asarray(getattr(mat["cjdata"], key))
        return out
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot read MATLAB v7.3 (HDF5) file ({exc})") from exc
    with fh:
        fields = {}
        for key in ("image", "tumorMask"):
            try:
                fields[key] = np.asarray(fh["cjdata"][key]).T
            except (KeyError, TypeError) as exc:
                raise DataError(f"{path}: field cjdata.{key} not found") from exc
    return fields


def _chars(value: np.ndarray | str) -> str:
    """A MATLAB char array (h5py: uint16 codes; scipy: str) as a stripped Python string."""
    if isinstance(value, str):
        return value.strip()
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return "".join(str(v) for v in arr.ravel()).strip()
    return "".join(chr(int(c)) for c in arr.ravel() if int(c)).strip()


def read_brain_tumor_pid(path: Path) -> str:
    """``cjdata.PID`` (the patient id) of one figshare 1512427 ``.mat`` file; ``DataError`` when absent."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MATLAB file not found")
    pid = ""
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as fh:
                pid = _chars(np.asarray(fh["cjdata"]["PID"]))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: field cjdata.PID not readable ({exc})") from exc
    else:
        from scipy.io import loadmat

        try:
            cj = loadmat(path, squeeze_me=True, struct_as_record=False, variable_names=["cjdata"])["cjdata"]
            pid = _chars(cj.PID)
        except Exception as exc:  # scipy raises many types on bad files; a missing field is AttributeError
            raise DataError(f"{path}: field cjdata.PID not readable ({exc})") from exc
    if not pid:
        raise DataError(f"{path}: field cjdata.PID is empty (needed for patient-level splits)")
    return pid


def read_brain_tumor_mat(path: Path) -> Loaded:
    """Read one figshare 1512427 ``.mat`` file (as published: MATLAB v7.3 = HDF5, read with h5py).

    MATLAB stores arrays column-major, so h5py sees them transposed; both ``cjdata.image`` and
    ``cjdata.tumorMask`` are transposed back to ``H x W``. The int16 image becomes uint16 (negative
    values, if any, clipped to 0 and logged); the mask is ``tumorMask > 0``. Older v5 files are read with
    scipy (no transposition needed there).
    """
    fields = _read_mat_fields(Path(path))
    image, mask = _to_uint(fields["image"], path), fields["tumorMask"]
    if image.ndim != 2 or mask.shape != image.shape:
        raise DataError(f"{path}: cjdata.tumorMask {mask.shape} does not match cjdata.image {image.shape}")
    return image, mask > 0


@register(
    "brain_tumor",
    modality="mri",
    needs_path=True,
    layout="**/<n>.mat (figshare 1512427, MATLAB v7.3: cjdata.image, cjdata.tumorMask); cvind.mat ignored",
)
def brain_tumor(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Figshare brain tumour T1-CE MRI (Cheng et al.): every ``.mat`` file under the folder, any depth,
    grouped by patient (``cjdata.PID``) for the splits."""
    root = _need(root)
    files = sorted(p for p in root.rglob("*.mat") if p.is_file() and p.stem.lower() != "cvind")
    if not files:
        raise DataError(f"{root}: no .mat files found (expected figshare 1512427's <n>.mat)")
    return [Item(safe_id(p.stem), _rel(p, root), _mat_loader(p), _pid_reader(p)) for p in files]


def _mat_loader(path: Path) -> Callable[[], Loaded]:
    return lambda: read_brain_tumor_mat(path)


def _pid_reader(path: Path) -> Callable[[], str]:
    return lambda: read_brain_tumor_pid(path)

