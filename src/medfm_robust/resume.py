"""Resumable training state: one atomic ``torch.save`` file per run, trusted only for the run it was written
for (its ``fingerprint``: a hash of the run's settings and data). Used by the segmentation trainer and the
VLM grounding LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medfm_robust.io import PathLike, atomic_path

log = logging.getLogger(__name__)


def write_resume_state(path: PathLike, state: dict[str, Any]) -> None:
    """Write a training run's resumable state (``torch.save`` of ``state``, which carries its
    ``fingerprint``) atomically; read back with :func:`read_resume_state`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_resume_state(path: PathLike | None, fingerprint: str) -> dict[str, Any] | None:
    """The resumable state at ``path`` if it exists, loads and was written for ``fingerprint`` (the run's
    settings and data); else None and the run starts afresh (a corrupt or foreign state is never trusted)."""
    import torch

    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt state is not trusted: start over
        log.warning("%s: unreadable resume state (%s); starting afresh", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: resume state written for other settings or data; starting afresh", path)
        return None
    return state
