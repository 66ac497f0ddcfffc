"""Readers for real datasets, each following its publisher's layout exactly (see resources/README.md), one
module per publisher or format; importing this package registers them all.

Every adapter lists :class:`~medfm_robust.data.registry.Item` s cheaply; pixels are read only when an item
is loaded, and a missing or unreadable file raises ``DataError`` naming it.
"""

from medfm_robust.data.adapters import brain_tumor, busi, folder, glaucoma, isic, kvasir
from medfm_robust.data.adapters.brain_tumor import read_brain_tumor_mat, read_brain_tumor_pid
from medfm_robust.data.adapters.files import read_source, safe_id

__all__ = [
    "brain_tumor",
    "busi",
    "folder",
    "glaucoma",
    "isic",
    "kvasir",
    "read_brain_tumor_mat",
    "read_brain_tumor_pid",
    "read_source",
    "safe_id",
]
