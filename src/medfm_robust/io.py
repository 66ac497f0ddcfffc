"""Atomic file writes and lossless image (de)serialisation shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.png import decode_png, encode_png, pil_to_array  # noqa: F401 (re-exported: the io surface)

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


def read_parquet_checked(path: PathLike, required: Sequence[str] = (), *, kind: str = "Parquet file",
                         columns: Sequence[str] | None = None) -> Any:
    """Read a Parquet file as a ``pandas.DataFrame`` (only ``columns`` when given), checking that it exists,
    is readable and has the ``required`` columns. ``kind`` names the file in the one-line errors
    (``"<path>: <kind> not found"``, ``"... cannot read <kind> (...)"``,
    ``"... <kind> lacks column(s) a, b"``).

    Raises:
        DataError: one of the three faults above.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {kind} not found")
    try:
        names = pq.read_schema(p).names
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{p}: cannot read {kind} ({exc})") from exc
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{p}: {kind} lacks column(s) {', '.join(missing)}")
    return pq.read_table(p, columns=list(columns) if columns is not None else None).to_pandas()


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
