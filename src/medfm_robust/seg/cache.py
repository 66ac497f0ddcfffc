"""On-disk image-embedding cache shared by every strategy whose image encoder has the same weights.

Key: (model name, SHA-256 of the image encoder's state dict, SHA-256 of the stored image array). One
``.npy`` file per embedding (``C x h x w`` float32, exactly what the encoder returned) under
``{root}/{model}/{encoder_hash[:16]}/{image_hash[:2]}/{image_hash}.npy``, written atomically, so concurrent
jobs can share the cache (two writers of one key write identical bytes; readers never see partial files).
Strategies that leave the encoder frozen (``zero_shot``, ``dec_only``, ``dec_prompt``) hit the same entries;
fine-tuned encoders get their own. The model's preprocessing is fixed per model name, so it is covered by
the key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medfm_robust.io import atomic_path
from medfm_robust.seg.models import PromptableSegmenter, state_hash

log = logging.getLogger(__name__)


@dataclass
class EncoderStats:
    """Counters: images encoded by the network, and embeddings served from the cache."""

    encoded: int = 0
    cache_hits: int = 0


class EmbeddingEncoder:
    """Encode batches with a model, going through the on-disk cache when ``root`` is given.

    ``stats.encoded`` counts the images that went through the image encoder (for the throughput benchmark's
    "encoder passes per evaluated image").
    """

    def __init__(self, model: PromptableSegmenter, root: str | Path | None) -> None:
        self.model = model
        self.root = Path(root) if root is not None else None
        self.encoder_hash = state_hash(model.image_encoder)
        self.stats = EncoderStats()

    def path_for(self, image_hash: str) -> Path:
        """Cache file of one image's embedding."""
        assert self.root is not None
        return self.root / self.model.name / self.encoder_hash[:16] / image_hash[:2] / f"{image_hash}.npy"

    def _load(self, image_hash: str) -> torch.Tensor | None:
        if self.root is None:
            return None
        path = self.path_for(image_hash)
        if not path.is_file():
            return None
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable cache entry (%s); recomputing it", path, exc)
            return None

    def _store(self, image_hash: str, embedding: torch.Tensor) -> None:
        if self.root is None:
            return
        path = self.path_for(image_hash)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, embedding.detach().to("cpu").numpy(), allow_pickle=False)

    @torch.no_grad()
    def encode(self, x01: torch.Tensor, image_hashes: Sequence[str]) -> torch.Tensor:
        """Embeddings ``B x C x h x w`` of a batch (``B x 1|3 x H x W`` in [0, 1]) on the model's device.

        Images found in the cache are not encoded again; the others are encoded in one batch and stored.
        """
        if len(image_hashes) != x01.shape[0]:
            raise ValueError("one image hash per image is needed")
        found = [self._load(h) for h in image_hashes]
        todo = [i for i, e in enumerate(found) if e is None]
        self.stats.cache_hits += len(image_hashes) - len(todo)
        device = self.model.device
        if todo:
            emb = self.model.encode(x01[todo].to(device))
            self.stats.encoded += len(todo)
            for j, i in enumerate(todo):
                found[i] = emb[j]
                self._store(image_hashes[i], emb[j])
        return torch.stack([e.to(device) for e in found if e is not None])
