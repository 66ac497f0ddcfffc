"""The project's PNG codec: a deterministic lossless encoder (8/16-bit grayscale, 8-bit colour) and a
Pillow-based decoder that never converts bit depth or alpha silently. ``medfm_robust.io`` re-exports
:func:`encode_png`, :func:`decode_png` and :func:`pil_to_array`."""

from __future__ import annotations

import io
import struct
import zlib

import deflate
import numpy as np
from PIL import Image, UnidentifiedImageError

from medfm_robust.errors import DataError

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
