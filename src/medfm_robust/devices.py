"""The one device picker of every stage (segmentation evaluation and fine-tuning, local VLMs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medfm_robust.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device"]


def pick_device(requested: str | None = "auto", key: str = "device") -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; any other value as given. A CUDA device
    requested on a host without one raises ``ConfigError`` naming the config ``key``."""
    import torch

    if requested is None or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key} '{requested}' but no CUDA device is available")
    return torch.device(requested)
