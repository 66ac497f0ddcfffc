"""Readers for real datasets, each following its publisher's layout exactly (see resources/README.md).

Every adapter lists :class:`~medfm_robust.data.registry.Item` s cheaply; pixels are read only when an item
is loaded, and a missing or unreadable file raises ``DataError`` naming it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.data.registry import Item, Loaded, register
from medfm_robust.data.shards import binarise_mask
from medfm_robust.errors import ConfigError, DataError
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
    for CT) when either is set, else the stored integers. Multi-frame files are a ``DataError``."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        px = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types on bad files (InvalidDicomError, ValueError, ...)
        raise DataError(f"{path}: cannot read DICOM ({exc})") from exc
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames); one slice per file")
    slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
    if slope != 1.0 or intercept != 0.0:
        return px.astype(np.float64) * slope + intercept
    return px


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
    return int(spec.get("mask_threshold", 127))


def _need(root: Path | None) -> Path:
    if root is None:
        raise DataError("dataset folder not given")
    return root


ISIC_PARTS = ("Training", "Test")


@register(
    "isic2016",
    modality="dermoscopy",
    needs_path=True,
    layout="ISBI2016_ISIC_Part1_{Training,Test}_Data/ISIC_nnnnnnn.jpg + "
    "ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/ISIC_nnnnnnn_Segmentation.png",
)
def isic2016(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """ISIC 2016 Task 1 (lesion segmentation): the parts named by ``spec['parts']`` (default both, pooled;
    the paper used ``[Training]``, 900 images)."""
    root = _need(root)
    parts = spec.get("parts") or ISIC_PARTS
    bad = sorted(set(parts) - set(ISIC_PARTS))
    if bad:
        raise DataError(f"dataset {dataset}: unknown ISIC 2016 part(s) {bad} (known: {ISIC_PARTS})")
    items: list[Item] = []
    for part in [p for p in ISIC_PARTS if p in parts]:
        img_dir = _subdir(root, f"ISBI2016_ISIC_Part1_{part}_Data")
        if img_dir is None:
            continue
        gt_dir = _subdir(root, f"ISBI2016_ISIC_Part1_{part}_GroundTruth")
        if gt_dir is None:
            raise DataError(
                f"{root / f'ISBI2016_ISIC_Part1_{part}_GroundTruth'}: ground-truth folder missing "
                f"(images are in {img_dir})"
            )
        for img in _images_in(img_dir, JPEG_EXTENSIONS):
            if not re.fullmatch(r"ISIC_\d+", img.stem):
                continue
            mask = gt_dir / f"{img.stem}_Segmentation.png"
            items.append(Item(img.stem, _rel(img, root), file_loader(img, [mask], _threshold(spec))))
    if not items:
        raise DataError(f"{root}: no ISBI2016_ISIC_Part1_{{Training,Test}}_Data/ISIC_*.jpg images found")
    return items


@register(
    "kvasir_seg",
    modality="endoscopy",
    needs_path=True,
    layout="[Kvasir-SEG/]images/<id>.jpg + [Kvasir-SEG/]masks/<id>.jpg (JPEG masks, foreground > 127)",
)
def kvasir_seg(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Kvasir-SEG polyps: JPEG images and same-name JPEG masks binarised strictly above 127."""
    root = _need(root)
    base = root / "Kvasir-SEG" if (root / "Kvasir-SEG" / "images").is_dir() else root
    img_dir, mask_dir = base / "images", base / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (expected Kvasir-SEG's images/ and masks/)")
    images = _images_in(img_dir)
    items = [
        Item(safe_id(img.stem), _rel(img, root), file_loader(img, [mask_dir / img.name], _threshold(spec)))
        for img in images
    ]
    if not items:
        raise DataError(f"{img_dir}: no images found")
    warn_orphan_masks(_images_in(mask_dir), {p.stem for p in images}, lambda m: m.stem)
    return items


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


# Label-map layout (REFUGE / ORIGA style): one grey mask per image with 0 = cup, 128 = disc rim,
# 255 = background; the disc is every value below 192, the cup every value below 64.
LABEL_MAP_LEVEL = {"optic-disc": 192, "optic-cup": 64}


def _label_map_loader(image: Path, mask_dir: Path, part: str) -> Callable[[], Loaded]:
    def load() -> Loaded:
        img = read_image(image)
        found = find_mask(image, mask_dir, "")
        if not found:
            raise DataError(f"{image}: no label map <stem>.* in {mask_dir}")
        lm = read_image(found[0])
        lm = lm.max(axis=2) if lm.ndim == 3 else lm
        if lm.shape != img.shape[:2]:
            raise DataError(
                f"{found[0]}: label map size {lm.shape} differs from image {image} {img.shape[:2]}"
            )
        return img, lm < LABEL_MAP_LEVEL[part]

    return load


def _glaucoma(dataset: str, spec: Mapping[str, Any], root: Path | None, part: str) -> list[Item]:
    """SMDG (``full-fundus/`` + ``optic-disc/`` + ``optic-cup/``) or a label-map layout (``images/`` +
    ``masks/`` or REFUGE's ``Disc_Cup_Masks/``), detected from the folders present."""
    root = _need(root)
    img_dir = _subdir(root, "full-fundus")
    if img_dir is None:
        lm_dir = _subdir(root, "masks", "Disc_Cup_Masks")
        if (root / "images").is_dir() and lm_dir is not None:
            return [
                Item(safe_id(p.stem), _rel(p, root), _label_map_loader(p, lm_dir, part))
                for p in _images_in(root / "images")
            ]
        raise DataError(
            f"{root}: expected SMDG folders full-fundus/ and {part}/, or a label-map layout images/ + masks/"
        )
    mask_dir = _subdir(root, part)
    if mask_dir is None:
        raise DataError(f"{root}: SMDG folder {part}/ not found")
    images: dict[str, Path] = {}
    for p in _images_in(img_dir):
        images.setdefault(p.stem, p)
    items = []
    for mp in _images_in(mask_dir):
        img = images.get(mp.stem)
        if img is None:
            raise DataError(f"{mp}: no fundus image named {mp.stem}.* in {img_dir}")
        items.append(Item(safe_id(mp.stem), _rel(img, root), file_loader(img, [mp], _threshold(spec))))
    if not items:
        raise DataError(f"{mask_dir}: no masks found")
    return items


GLAUCOMA_LAYOUT = (
    "SMDG: full-fundus/<id>.png + {mask}/<id>.png (folders may be doubled, e.g. full-fundus/full-fundus/); "
    "or label maps: images/<id>.* + masks/<id>.* (0 cup, 128 disc rim, 255 background)"
)


@register(
    "glaucoma_disc", modality="fundus", needs_path=True, layout=GLAUCOMA_LAYOUT.format(mask="optic-disc")
)
def glaucoma_disc(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Glaucoma fundus photographs with their optic-disc mask (SMDG: images without one are not listed)."""
    return _glaucoma(dataset, spec, root, "optic-disc")


@register("glaucoma_cup", modality="fundus", needs_path=True, layout=GLAUCOMA_LAYOUT.format(mask="optic-cup"))
def glaucoma_cup(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Glaucoma fundus photographs with their optic-cup mask (SMDG: images without one are not listed)."""
    return _glaucoma(dataset, spec, root, "optic-cup")


BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_NAME = re.compile(r"(?P<stem>.+\(\d+\))(?P<mask>_mask(?:_\d+)?)?")


@register(
    "busi",
    modality="ultrasound",
    needs_path=True,
    layout="[Dataset_BUSI_with_GT/]{benign,malignant,normal}/<class> (N).png + <class> (N)_mask[_k].png",
)
def busi(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """BUSI breast ultrasound: every ``_mask*.png`` of an image merged by union; ids like ``benign_12``."""
    root = _need(root)
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    classes = [c for c in BUSI_CLASSES if (base / c).is_dir()]
    if not classes:
        raise DataError(f"{base}: none of the BUSI folders {', '.join(BUSI_CLASSES)} found")
    items = []
    for cls in classes:
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for p in _images_in(base / cls, (".png",)):
            m = _BUSI_NAME.fullmatch(p.stem)
            if m is None:
                raise DataError(f"{p}: file name does not follow BUSI's '<class> (N)[_mask[_k]].png'")
            if m["mask"]:
                masks.setdefault(m["stem"], []).append(p)
            else:
                images[m["stem"]] = p
        for stem in sorted(set(masks) - set(images)):
            raise DataError(f"{masks[stem][0]}: mask without its image {stem}.png")
        for stem, img in sorted(images.items()):
            loader = file_loader(img, sorted(masks.get(stem, [])), _threshold(spec))
            items.append(Item(safe_id(stem), _rel(img, root), loader))
    return items


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


def _folder_loader(image: Path, mask_dir: Path, suffix: str, threshold: int) -> Callable[[], Loaded]:
    return lambda: file_loader(image, find_mask(image, mask_dir, suffix), threshold)()


def group_reader(
    dataset: str, spec: Mapping[str, Any], root: Path
) -> Callable[[Path], Callable[[], str]] | None:
    """The ``folder`` adapter's ``group_by``: None (every image its own group), a regex with one capture
    group matched (``re.search``) on the image file name, or ``{csv, image_column, group_column}``: a CSV
    file (relative to the dataset folder) whose ``image_column`` holds the image's file name or stem.
    Returns a factory of per-image readers; an image the rule cannot place raises ``DataError`` naming it."""
    rule = spec.get("group_by")
    key = f"datasets.{dataset}.group_by"
    if rule is None:
        return None
    if isinstance(rule, str):
        try:
            pattern = re.compile(rule)
        except re.error as exc:
            raise ConfigError(f"config key '{key}': invalid regular expression ({exc})") from exc
        if pattern.groups != 1:
            raise ConfigError(
                f"config key '{key}': the pattern needs exactly one capture group, has {pattern.groups}"
            )

        def by_name(path: Path) -> Callable[[], str]:
            def read() -> str:
                m = pattern.search(path.name)
                if m is None or not m.group(1):
                    raise DataError(f"{path}: file name does not match config key '{key}' ({rule})")
                return m.group(1)

            return read

        return by_name
    if not isinstance(rule, Mapping) or set(rule) != {"csv", "image_column", "group_column"}:
        raise ConfigError(f"config key '{key}': expected a regex or {{csv, image_column, group_column}}")
    csv_path = root / str(rule["csv"])
    table = _read_group_csv(csv_path, str(rule["image_column"]), str(rule["group_column"]), key)

    def by_csv(path: Path) -> Callable[[], str]:
        def read() -> str:
            group = table.get(path.name, table.get(_stem(path)))
            if not group:
                raise DataError(f"{path}: no group in {csv_path} (config key '{key}')")
            return group

        return read

    return by_csv


def _read_group_csv(path: Path, image_column: str, group_column: str, key: str) -> dict[str, str]:
    """``image file name or stem -> group`` from a CSV file (two entries for one image are an error)."""
    import csv

    if not path.is_file():
        raise DataError(f"{path}: group CSV not found (config key '{key}.csv')")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        for col in (image_column, group_column):
            if col not in (reader.fieldnames or []):
                raise DataError(f"{path}: column '{col}' not found (config key '{key}')")
        for row in reader:
            name, group = str(row[image_column]).strip(), str(row[group_column]).strip()
            if name in out and out[name] != group:
                raise DataError(f"{path}: image '{name}' listed with groups '{out[name]}' and '{group}'")
            out[name] = group
    return out


@register(
    "folder",
    modality=None,
    needs_path=True,
    layout="<images_dir>/<stem>.<ext> + <masks_dir>/<stem><mask_suffix> (modality from the config; "
    "ext: png, jpg, tif, bmp, dcm, nii, nii.gz)",
)
def folder(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """A user's own dataset: ``images_dir`` images, ``masks_dir`` masks named ``<stem><mask_suffix>``,
    optionally grouped by patient (``group_by``, :func:`group_reader`)."""
    root = _need(root)
    img_dir = root / str(spec.get("images_dir", "images"))
    mask_dir = root / str(spec.get("masks_dir", "masks"))
    for key, d in (("images_dir", img_dir), ("masks_dir", mask_dir)):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (config key 'datasets.{dataset}.{key}')")
    suffix = str(spec.get("mask_suffix", ""))
    same = img_dir.resolve() == mask_dir.resolve()
    if same and not suffix:
        raise DataError(f"{img_dir}: images and masks share a folder; set 'datasets.{dataset}.mask_suffix'")
    groups = group_reader(dataset, spec, root)
    items = []
    stems = set()

    def is_mask(p: Path) -> bool:
        return p.name.endswith(suffix) if Path(suffix).suffix else _stem(p).endswith(suffix)

    def stem_of(mask: Path) -> str:
        if not is_mask(mask):
            return _stem(mask)
        return (mask.name if Path(suffix).suffix else _stem(mask))[: -len(suffix) or None]

    for img in _images_in(img_dir, SOURCE_EXTENSIONS):
        if same and is_mask(img):
            continue
        stems.add(_stem(img))
        loader = _folder_loader(img, mask_dir, suffix, _threshold(spec))
        items.append(Item(safe_id(_stem(img)), _rel(img, root), loader, groups(img) if groups else None))
    if not items:
        raise DataError(f"{img_dir}: no images found")
    masks = (m for m in _images_in(mask_dir, SOURCE_EXTENSIONS) if not same or is_mask(m))
    warn_orphan_masks(masks, stems, stem_of)
    return items
