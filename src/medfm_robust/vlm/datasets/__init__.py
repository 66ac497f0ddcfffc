"""VLM sample tables: publisher-layout readers (OmniMedVQA, ROCOv2, MeCoVQA grounding), the demo builder
and deterministic modality-stratified sampling, one module each; every reader is registered in
:mod:`.registry` (``vlm.datasets.<name>.adapter`` selects it) and :mod:`.build` dispatches to it.

Sample table (``paths.vlm_samples(dataset, task)``), one row per sample, sorted by ``sample_id``:

=============== ================= ===========================================================================
column          type              meaning
=============== ================= ===========================================================================
``sample_id``   str               unique within (dataset, task)
``dataset``     str               VLM dataset name (config key under ``vlm.datasets``)
``task``        str               ``vqa``, ``caption`` or ``grounding``
``modality``    str               one of :data:`medfm_robust.perturb.registry.MODALITIES`
``split``       str               ``train``, ``val`` or ``test`` (only ``test`` is perturbed and evaluated)
``image_id``    str               identity of the image (several VQA questions may share one image)
``image_png``   binary            the image, lossless PNG (uint8/uint16, grayscale or RGB)
``height``      int32             image height in pixels
``width``       int32             image width in pixels
``question``    str               the question / instruction (without answer-format instructions)
``question_type`` str             e.g. ``modality``, ``organ``, ``side``, ``size`` (demo), the publisher's
                                  type (OmniMedVQA) or the task name
``options``     list<str>         VQA options in letter order A, B, C, D (empty for other tasks)
``answer``      str               VQA: the correct letter; caption: the reference caption; grounding: the
                                  box as text ``[x0, y0, x1, y1]`` (pixels, inclusive)
``reference``   str               VQA: the correct option text; caption: reference caption; grounding: as
                                  ``answer``
``box``         list<int32>[4]    grounding target ``[x_min, y_min, x_max, y_max]`` in pixels of the stored
                                  image, **inclusive** max (the project's box convention); null otherwise
``source``      str               provenance (file path / record id in the publisher's files)
``mask_png``    binary or null    target mask (PNG, {0, 255}) when known (demo and mask-based grounding);
                                  label-moving perturbations move it and the box is recomputed from it
``canonical_id`` str              ``{dataset}/{image_id}`` when the image is a canonical-shard image (demo):
                                  its perturbed versions come from the ``paths.perturbed_shard`` files;
                                  ``""`` otherwise
=============== ================= ===========================================================================
"""

# Importing a reader module (demo, omnimedvqa, rocov2, mecovqa) registers it.
from medfm_robust.vlm.datasets.box_formats import BOX_FORMATS, detect_box_format, normalise_box
from medfm_robust.vlm.datasets.build import (
    build_and_write,
    build_sample_table,
    dataset_modalities,
    dataset_root,
    dataset_sources,
    dataset_tasks,
)
from medfm_robust.vlm.datasets.common import (
    CAPTION_QUESTION,
    LETTERS,
    MODALITIES,
    MODALITY_ALIASES,
    MODALITY_NAMES,
    SAMPLE_COLUMNS,
    map_modality,
    read_samples,
    sample_schema,
    to_frame,
    write_samples,
)
from medfm_robust.vlm.datasets.demo import (
    CAPTION_TEMPLATES,
    SHOWCASE_MODALITIES,
    SIDES,
    SIZE_CLASSES,
    build_demo,
    demo_modalities,
    demo_organ_finding,
    demo_rows_for_image,
    demo_sources,
    showcase_records,
)
from medfm_robust.vlm.datasets.mecovqa import read_mecovqa
from medfm_robust.vlm.datasets.omnimedvqa import read_omnimedvqa
from medfm_robust.vlm.datasets.registry import READERS, BuildContext, ReaderSpec, get_reader, register
from medfm_robust.vlm.datasets.rocov2 import ROCO_MODALITY_CUIS, ROCO_SPLITS, read_rocov2
from medfm_robust.vlm.datasets.sampling import sample_splits, stratified_sample
from medfm_robust.vlm.tasks import TASKS

__all__ = [
    "BOX_FORMATS", "CAPTION_QUESTION", "CAPTION_TEMPLATES", "LETTERS", "MODALITIES", "MODALITY_ALIASES",
    "MODALITY_NAMES", "READERS", "ROCO_MODALITY_CUIS", "ROCO_SPLITS", "SAMPLE_COLUMNS", "SHOWCASE_MODALITIES",
    "SIDES", "SIZE_CLASSES", "TASKS", "BuildContext", "ReaderSpec",
    "build_and_write", "build_demo", "build_sample_table", "dataset_modalities", "dataset_root",
    "dataset_sources", "dataset_tasks", "demo_modalities", "demo_organ_finding", "demo_rows_for_image",
    "demo_sources", "detect_box_format", "get_reader", "map_modality", "normalise_box", "read_mecovqa",
    "read_omnimedvqa", "read_rocov2", "read_samples", "register", "sample_schema", "sample_splits",
    "showcase_records", "stratified_sample", "to_frame", "write_samples",
]
