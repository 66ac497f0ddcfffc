"""Atomic file writes and lossless image (de)serialisation shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import socket
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import deflate
import numpy as np
from PIL import Image, UnidentifiedImageError

from medfm_robust.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]


_HOST = socket.gethostname().replace(".", "_") or "host"
STALE_TEMP_SECONDS = 24 * 3600  # a temporary of another host is removed once this old

log = logging.getLogger(__name__)


def _temp_name(final: Path) -> str:
    """``.<name>.<host>.<pid>.<random>.tmp``: recognisable, so later writers can find their debris."""
    return f".{final.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by killed writers; returns the removed files.

    A temporary (see :func:`atomic_path`) is stale when its writer ran on this host and is no longer
    alive, or ran on another host and the file is older than :data:`STALE_TEMP_SECONDS` (shared file
    systems). Temporaries of live writers (other threads or processes writing the same target) are kept.
    """
    final = Path(path)
    prefix = f".{final.name}."
    removed = []
    try:
        candidates = [
            p for p in final.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")
        ]
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name[len(prefix) : -len(".tmp")].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        host, pid = parts[0], int(parts[1])
        try:
            stale = (
                not _pid_alive(pid)
                if host == _HOST
                else time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS
            )
            if stale:
                tmp.unlink()
                removed.append(tmp)
                log.info("removed %s (left by an interrupted writer)", tmp)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_paths(paths: Sequence[PathLike]) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; rename them all onto ``paths`` only if the block succeeds.

    An interrupted job therefore never leaves a half-written file under a final name, and a block that
    writes several files (an image and its mask) leaves either all of them or none. Stale temporaries
    of the same targets (from killed writers) are removed first.
    """
    finals = [Path(p) for p in paths]
    if len({os.path.abspath(p) for p in finals}) != len(finals):
        raise DataError(f"the same output file is named twice: {', '.join(map(str, finals))}")
    tmps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(final)
            tmp = final.parent / _temp_name(final)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            os.close(fd)
            tmps.append(tmp)
        yield list(tmps)
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted job therefore never leaves a half-written file under the final name; see
    :func:`atomic_paths` (its temporaries are named ``.<name>.<host>.<pid>.<random>.tmp``).
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (byte-stable output)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet_atomic(path: PathLike, table: Any) -> None:
    """Write a ``pandas.DataFrame`` or ``pyarrow.Table`` to Parquet atomically (zstd, no index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(image: np.ndarray) -> bytes:
    """Encode an ``H x W`` or ``H x W x C`` (C in 1..4) uint8/uint16 array losslessly as PNG bytes.

    Every row uses PNG's "Up" filter and the zlib stream is written by libdeflate (``deflate``, level 1):
    about 2.5 ms for a 256 x 256 RGB image, several times faster than Pillow's adaptive filtering + zlib at
    a similar size. The bytes depend only on the pixels (and the pinned libdeflate): identical across runs,
    processes and CPU types (ISA-L, used before, changed a byte now and then between runs). Any PNG decoder
    reads them. uint16 is kept at 16 bits for grayscale; 16-bit colour raises :class:`DataError` (Pillow,
    which decodes, reads it back as 8 bits).
    """
    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in _PNG_COLOUR_TYPES or 0 in arr.shape:
        raise DataError(f"cannot encode an array of shape {np.asarray(image).shape} as PNG")
    if arr.dtype == np.uint16:
        if arr.shape[2] != 1:
            raise DataError("16-bit PNG encoding supports grayscale images only")
        arr = arr.astype(">u2")
    elif arr.dtype != np.uint8:
        raise DataError(f"cannot encode dtype {arr.dtype} as PNG (expected uint8 or uint16)")
    h, w, c = arr.shape
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    idat = deflate.zlib_compress(raw.data, 1)
    ihdr = struct.pack(">IIBBBBB", w, h, 8 * arr.dtype.itemsize, _PNG_COLOUR_TYPES[c], 0, 0, 0)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def decode_png(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode PNG (or any Pillow-readable) bytes to a NumPy array, keeping bit depth and channels."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil_to_array(pil, header=data[:32])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot decode image ({exc})") from exc
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from exc


def _colour_bits(pil: Image.Image, header: bytes) -> int:
    """Bits per sample of a colour file as stored (Pillow silently reads 16-bit colour as 8 bits)."""
    if header[:8] == _PNG_SIGNATURE and len(header) >= 26 and header[12:16] == b"IHDR":
        return header[24] if header[25] in (2, 6) else 8  # colour types RGB, RGBA
    bits = getattr(pil, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(bits, tuple | list) and bits and pil.mode in ("RGB", "RGBA", "CMYK"):
        return int(max(bits))
    return 8


def pil_to_array(pil: Image.Image, *, header: bytes = b"") -> np.ndarray:
    """Convert a Pillow image to uint8 (8-bit modes) or uint16 (16-bit grayscale) without rescaling.

    Nothing is converted silently: 16-bit colour (which Pillow would truncate to 8 bits) raises
    :class:`DataError`, and so does an alpha channel with any pixel that is not fully opaque (dropping
    or compositing it would change the image); a fully opaque alpha channel is dropped (lossless).
    ``header``: the first bytes of the file, to read the stored bit depth of PNG files.
    """
    if pil.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(pil, dtype=np.uint16).copy()
    if pil.mode == "I":
        arr = np.asarray(pil)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError("32-bit integer image outside the uint16 range")
        return arr.astype(np.uint16)
    if pil.mode == "F":
        raise DataError("floating-point images are not supported; save as 8- or 16-bit")
    if pil.mode in ("RGB", "RGBA") and _colour_bits(pil, header) > 8:
        raise DataError(
            f"16-bit colour images are not supported ({_colour_bits(pil, header)} bits per channel would be "
            "cut to 8); convert to 8-bit colour or 16-bit grayscale"
        )
    if pil.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        pil = pil.convert("RGBA" if "A" in pil.mode or "transparency" in pil.info else "RGB")
    if pil.mode == "L" and "transparency" in pil.info:
        pil = pil.convert("LA")
    if pil.mode == "1":
        pil = pil.convert("L")
    if pil.mode in ("LA", "RGBA"):
        alpha = np.asarray(pil.getchannel("A"))
        if alpha.min() < 255:
            raise DataError(
                f"has an alpha channel with {int((alpha < 255).sum())} transparent pixels; "
                "flatten it onto a background (alpha is not dropped silently)"
            )
        pil = pil.convert(pil.mode[:-1])
    return np.asarray(pil).copy()


DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image (width x height) read by default; config key ``data.max_pixels``, CLI ``--max-pixels``."""

_max_pixels: list[int | None] = [DEFAULT_MAX_PIXELS]  # the process-wide limit (set from the config)


def set_max_pixels(limit: int | None) -> int | None:
    """Set the process-wide limit of :func:`read_image` (None: none); returns the previous one.

    Ingestion sets it from the config key ``data.max_pixels`` before any adapter reads a file.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"config key 'data.max_pixels': expected a positive integer or null, got {limit!r}")
    previous, _max_pixels[0] = _max_pixels[0], limit
    return previous


_PROCESS_LIMIT: Any = object()


def read_image(path: PathLike, *, max_pixels: int | None = _PROCESS_LIMIT) -> np.ndarray:
    """Read an image file (PNG, JPEG, TIFF, ...) to an array; a bad file raises ``DataError`` naming it.

    An image of more than ``max_pixels`` pixels (None: no limit; default: the process-wide limit of
    :func:`set_max_pixels`, 4096 x 4096 unless configured) is refused before it is decoded.
    """
    if max_pixels is _PROCESS_LIMIT:
        max_pixels = _max_pixels[0]
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found" if not p.is_dir() else f"{p}: is a folder, not an image")
    try:
        with open(p, "rb") as fh:
            header = fh.read(32)
        with Image.open(p) as pil:
            w, h = pil.size
            if max_pixels is not None and w * h > max_pixels:
                raise DataError(
                    f"{p}: image is {w} x {h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                    "(config key 'data.max_pixels', CLI option --max-pixels)"
                )
            pil.load()
            return pil_to_array(pil, header=header)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{p}: cannot read image ({exc})") from exc
    except DataError as exc:
        raise exc if str(exc).startswith(str(p)) else DataError(f"{p}: {exc}") from exc


def check_outputs(outputs: Sequence[PathLike], inputs: Sequence[PathLike] = ()) -> None:
    """Refuse, before anything is computed or written, outputs that cannot be written or would destroy input.

    Raises :class:`DataError` naming the file when an output is a folder, when it is (also through a
    symbolic or hard link) one of ``inputs`` or another output, or when its folder cannot be created or
    written.
    """
    seen: dict[str, Path] = {}
    for out in map(Path, outputs):
        key = os.path.realpath(out)
        if key in seen:
            raise DataError(f"{out}: named twice as an output (also as {seen[key]})")
        seen[key] = out
        if out.is_dir():
            raise DataError(f"{out}: is a folder; give a file name for the output")
        for src in map(Path, inputs):
            same = os.path.realpath(src) == key
            if not same and out.exists() and src.exists():
                same = os.path.samefile(src, out)
            if same:
                raise DataError(f"{out}: output is the input file {src}; refusing to overwrite it")
        folder = out.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"{out}: cannot create its folder ({folder} is a file)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"{out}: folder {folder} is not writable")


def check_png_name(path: PathLike) -> None:
    """Refuse an output name whose extension promises another format than the PNG that is written."""
    suffix = Path(path).suffix.lower()
    if suffix != ".png":
        raise DataError(
            f"{path}: output is written as PNG; name it '*.png' (not '{suffix or 'no extension'}')"
        )


def write_images(items: Sequence[tuple[PathLike, np.ndarray]]) -> None:
    """Write several arrays as PNG files (names ending in ``.png``): all of them or, on any error, none."""
    for path, _ in items:
        check_png_name(path)
    data = [encode_png(image) for _, image in items]
    with atomic_paths([p for p, _ in items]) as tmps:
        for tmp, blob in zip(tmps, data, strict=True):
            tmp.write_bytes(blob)


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write an array as a PNG file atomically (the name must end in ``.png``)."""
    write_images([(path, image)])


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def array_hash(array: np.ndarray) -> str:
    """Stable hex SHA-256 of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()
