"""The segmentation model registry: one decorated builder per model, carrying its metadata.

A model is registered with :func:`register_model` on its builder ``build() -> PromptableSegmenter``
(random weights) in its family's module (``seg/models/<family>.py``); the builder's docstring's first
paragraph is the description. Everything else that names models (the schema's enums, the fixture
checkpoints, ``medfm-robust seg-models``) derives from or is tested against :data:`MODEL_SPECS`. Display
labels and colours live in :mod:`medfm_robust.report.palette` (torch-free, shared with the VLMs; an
unlisted model gets a prettified name and a colour hashed from it), tested to cover every model here.
This module imports no torch; the registry fills when ``medfm_robust.seg.models`` (which imports every
family module) is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medfm_robust.named_registry import NamedRegistry

AdapterSupport = Literal["native", "insertable", "none"]
CheckpointSource = Literal["official", "workflow"]


@dataclass(frozen=True)
class ModelSpec:
    """Metadata and builder of one registered segmentation model.

    ``adapters``: ``native`` (the architecture has SAM-Med2D adapters), ``insertable`` (``insert_adapters``
    adds them to a built model, as a no-op until trained) or ``none``. ``checkpoint_source``: ``official``
    (a published file named ``checkpoint_file``) or ``workflow`` (trained by this workflow).
    ``bundled_checkpoint``: where a package ships the weights, the function returning the checked file (the
    config value ``bundled``).
    ``checkpoint_sha256``: the file's SHA-256 where it is known (else None). ``family``: the architecture
    family (``sam_vit_b`` models are built on the ``meta`` device where only structure is needed).
    """

    name: str
    family: str
    input_size: int
    normalisation: str
    checkpoint_file: str
    checkpoint_source: CheckpointSource
    checkpoint_sha256: str | None
    adapters: AdapterSupport
    description: str
    builder: Callable[[], Any] = field(repr=False, compare=False)
    insert_adapters: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)
    bundled_checkpoint: Callable[[], Path] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly metadata (what ``medfm-robust seg-models --json`` prints)."""
        return {
            "name": self.name,
            "input_size": self.input_size,
            "normalisation": self.normalisation,
            "checkpoint_file": self.checkpoint_file,
            "description": self.description,
        }


MODEL_SPECS: NamedRegistry[ModelSpec] = NamedRegistry("segmentation model")


def register_model(
    name: str,
    *,
    family: str,
    input_size: int,
    normalisation: str,
    checkpoint_file: str,
    checkpoint_source: CheckpointSource = "official",
    checkpoint_sha256: str | None = None,
    adapters: AdapterSupport = "none",
    insert_adapters: Callable[[Any], None] | None = None,
    bundled_checkpoint: Callable[[], Path] | None = None,
    description: str | None = None,
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering ``build() -> PromptableSegmenter`` as model ``name`` (see :class:`ModelSpec`;
    ``description`` defaults to the first paragraph of the builder's docstring)."""
    if (adapters == "insertable") != (insert_adapters is not None):
        raise ValueError(f"model {name!r}: insert_adapters is required exactly for adapters='insertable'")

    def deco(fn: Callable[[], Any]) -> Callable[[], Any]:
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        spec = ModelSpec(
            name=name, family=family, input_size=input_size, normalisation=normalisation,
            checkpoint_file=checkpoint_file, checkpoint_source=checkpoint_source,
            checkpoint_sha256=checkpoint_sha256, adapters=adapters, description=description or doc,
            builder=fn, insert_adapters=insert_adapters, bundled_checkpoint=bundled_checkpoint,
        )
        MODEL_SPECS.add(name, spec)
        return fn

    return deco


def get_model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises ``ConfigError`` listing the known ones."""
    return MODEL_SPECS.lookup(name)


def adapter_models() -> list[str]:
    """Models that have adapters or can be given them (registration order)."""
    return [n for n, s in MODEL_SPECS.items() if s.adapters != "none"]
