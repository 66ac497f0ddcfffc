"""Listing manifests of the workflow's source inputs (dataset folders, model folders, checkpoints).

Snakemake compares an input's modification time with its outputs', and a folder's mtime does not change
when a file inside it is edited (nor when a file is added in a sub-folder). Rules that read a source folder
therefore carry ``params: sources=<manifest hash>``: a hash of every file's relative path, size and
``mtime_ns``. Any added, removed, renamed, resized or re-written file changes the hash, and Snakemake's
``params`` re-run trigger re-runs exactly the jobs whose source changed (and, as always, their
descendants). Only metadata is read (one ``stat`` per file), so a 10,000-file tree costs milliseconds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from medfm_robust.paths import RESULTS

MISSING = "missing"


def _walk(root: str, rel: str, out: list[tuple[str, int, int]], seen: set[tuple[int, int]]) -> None:
    """Append ``(relative path, size, mtime_ns)`` of every regular file under ``root`` (sorted)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):  # .DS_Store, .ipynb_checkpoints, editor swap files: not data
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat()  # follows symbolic links (datasets are often linked into resources/)
        except OSError:  # a dangling link is a listing entry of its own
            out.append((name, -1, -1))
            continue
        if entry.is_dir():
            ident = (st.st_dev, st.st_ino)
            if ident in seen:  # a link cycle
                continue
            seen.add(ident)
            _walk(entry.path, name, out, seen)
        else:
            out.append((name, st.st_size, st.st_mtime_ns))


def listing(path: str | Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of a file, or of every non-hidden file under a folder.

    Relative paths use ``/``; a single file is listed under its own name. Empty for a missing path.
    """
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [(p.name, st.st_size, st.st_mtime_ns)]
    out: list[tuple[str, int, int]] = []
    if p.is_dir():
        st = p.stat()
        _walk(str(p), "", out, {(st.st_dev, st.st_ino)})
    return out


def source_manifest(paths: str | Path | Iterable[str | Path | None] | None) -> str:
    """16-hex-digit hash of the listings of ``paths`` (folders or files; ``None`` and ``""`` skipped).

    The same tree gives the same hash in any process; a missing path hashes as ``missing`` (its
    absence is reported elsewhere, e.g. by the data stage's start-up check).
    """
    if paths is None or isinstance(paths, str | Path):
        paths = [paths]
    h = hashlib.sha256()
    for path in paths:
        if not path:
            continue
        h.update(f"{path}\0".encode())
        if not os.path.exists(path):
            h.update(MISSING.encode())
            continue
        for name, size, mtime_ns in listing(path):
            h.update(f"{name}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


PRODUCED_PREFIX = RESULTS  # every rule writes under paths.RESULTS (logs/ is never an input)


def source_paths(*inputs: object) -> list[str]:
    """The source paths among a job's inputs: every path not under ``paths.RESULTS`` (sorted, unique).

    ``inputs``: paths, lists of paths or input dicts (as the rules' input functions return them).
    Workflow outputs are left out: their changes reach downstream jobs through the usual mtime check,
    and before they exist their listing would differ from the one after the run.
    """
    out: set[str] = set()

    def add(item: object) -> None:
        if isinstance(item, Mapping):
            for value in item.values():
                add(value)
        elif isinstance(item, str | Path):
            if str(item) and Path(item).parts[:1] != (PRODUCED_PREFIX,):
                out.add(str(item))
        elif isinstance(item, Iterable):
            for value in item:
                add(value)

    for item in inputs:
        add(item)
    return sorted(out)


def source_params(*inputs: object) -> str:
    """:func:`source_manifest` of :func:`source_paths` (the value of a rule's ``params: sources``)."""
    return source_manifest(source_paths(*inputs))
