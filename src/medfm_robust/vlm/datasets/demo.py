"""The demo VLM dataset: VQA, caption and grounding samples templated from the canonical shards' images and
masks, plus the data stage's showcase images."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.boxes import box_text
from medfm_robust.config import with_defaults
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png
from medfm_robust.paths import data_shard
from medfm_robust.perturb.registry import MODALITIES
from medfm_robust.seeding import rng_for
from medfm_robust.vlm.datasets.common import CAPTION_QUESTION, LETTERS, MODALITY_NAMES, to_frame
from medfm_robust.vlm.datasets.registry import BuildContext, register
from medfm_robust.vlm.tasks import TASKS

log = logging.getLogger(__name__)

SIDES = ("left", "right", "center")
SIZE_CLASSES = ("small", "medium", "large")
CAPTION_TEMPLATES = (
    "{Modality} image of the {organ} showing a {size} {finding} in the {position} part of the image.",
    "{Modality} of the {organ} with a {size} {finding} located {position_phrase}.",
    "{Modality} image of the {organ}: a {size} {finding} {position_phrase}.",
)


def _organ_vocab() -> tuple[str, ...]:
    from medfm_robust.data.demo import ORGAN_BY_MODALITY

    return tuple(sorted({*ORGAN_BY_MODALITY.values(), "head", "brain"}))


def demo_organ_finding(
    source: str, modality: str, organs: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(organ, target name) of canonical dataset ``source`` for the demo templates.

    ``organs`` (config ``vlm.datasets.<name>.organs``) wins; MNI152 sources show the brain (mask: brain),
    Shepp-Logan phantoms a head (mask: a phantom structure); otherwise
    :data:`medfm_robust.data.demo.ORGAN_BY_MODALITY` / ``FINDING_BY_MODALITY``.
    """
    from medfm_robust.data.demo import FINDING_BY_MODALITY, ORGAN_BY_MODALITY

    low = source.lower()
    if "mni" in low:
        organ, finding = "brain", "brain tissue"
    elif "shepp" in low:
        organ, finding = "head", "highlighted structure"
    elif modality in ORGAN_BY_MODALITY:
        organ, finding = ORGAN_BY_MODALITY[modality], FINDING_BY_MODALITY[modality]
    else:
        raise DataError(f"{source}: no demo organ for modality '{modality}'")
    if organs and source in organs:
        organ = organs[source]
    return organ, finding


def _position(facts: Mapping[str, Any]) -> tuple[str, str]:
    """(``upper left``-style position, phrase such as ``in the upper left``/``in the centre``)."""
    parts = [p for p in (facts["vertical"], facts["side"]) if p not in ("middle", "center")]
    pos = " ".join(parts) if parts else "central"
    return pos, (f"in the {pos} part" if parts else "in the centre")


def _mc(correct: str, vocab: Sequence[str], rng: np.random.Generator, n: int = 4) -> tuple[list[str], str]:
    """Options (correct + up to ``n - 1`` distinct distractors from ``vocab``, shuffled), correct letter."""
    distractors = [v for v in dict.fromkeys(vocab) if v != correct]
    picks = rng.choice(len(distractors), size=min(n - 1, len(distractors)), replace=False)
    options = [correct] + [distractors[int(i)] for i in picks]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    return options, LETTERS[options.index(correct)]


def demo_rows_for_image(
    rec: Mapping[str, Any], *, dataset: str, tasks: Iterable[str], seed: int,
    organs: Mapping[str, str] | None = None, canonical: bool = True,
) -> list[dict[str, Any]]:
    """VQA (modality, organ, side, size), caption and grounding samples for one image record.

    ``rec`` is a canonical-shard row (``image_id``, ``dataset``, ``modality``, ``split``, ``image_png``,
    ``mask_png``, ``height``, ``width``) or a showcase record (``mask_png`` None, ``canonical=False``).
    Mask facts come from :func:`medfm_robust.data.demo.describe_mask`. Without a mask (or an empty one)
    only the modality (and, for canonical images, organ) question and a lesion-free caption are made.
    Options, answer letters and caption templates are drawn from ``rng_for`` keyed by the image and question.
    """
    from medfm_robust.data.demo import describe_mask

    tasks = set(tasks)
    source = str(rec["dataset"])
    mask = decode_png(rec["mask_png"], source=f"{source}/{rec['image_id']}") if rec.get(
        "mask_png") is not None else None
    facts = describe_mask(mask) if mask is not None and (np.asarray(mask) > 0).any() else None
    modality = str(rec["modality"])
    organ, finding = demo_organ_finding(source, modality, organs) if canonical else ("", "")
    base_id = f"{source}/{rec['image_id']}"
    common = {
        "dataset": dataset, "modality": modality, "split": str(rec["split"]), "image_id": base_id,
        "image_png": rec["image_png"], "height": int(rec["height"]), "width": int(rec["width"]),
        "source": (f"{data_shard(source, rec['split'])}#{rec['image_id']}" if canonical
                   else str(rec.get("source", ""))),
        "mask_png": None, "canonical_id": base_id if canonical else "",
    }
    mname = MODALITY_NAMES[modality]
    rows: list[dict[str, Any]] = []
    if "vqa" in tasks:
        rows += _vqa_rows(common, facts, mname=mname, organ=organ, finding=finding, canonical=canonical,
                          seed=seed)
    if "caption" in tasks:
        caption = _caption(base_id, facts, mname=mname, organ=organ, finding=finding, canonical=canonical,
                           seed=seed)
        rows.append({**common, "sample_id": base_id, "task": "caption", "question": CAPTION_QUESTION,
                     "question_type": "caption", "options": [], "answer": caption, "reference": caption,
                     "box": None})
    if "grounding" in tasks and facts is not None:
        box = [int(v) for v in facts["box"]]
        rows.append({**common, "sample_id": base_id, "task": "grounding",
                     "question": f"Locate the {finding} in this {mname} image.", "question_type": "grounding",
                     "options": [], "answer": box_text(box), "reference": box_text(box), "box": box,
                     "mask_png": rec["mask_png"]})
    return rows


def _vqa_rows(common: Mapping[str, Any], facts: Mapping[str, Any] | None, *, mname: str, organ: str,
              finding: str, canonical: bool, seed: int) -> list[dict[str, Any]]:
    """The modality question, the organ question (canonical images) and, with mask ``facts``, the side and
    size questions of one image (``common``: its shared sample fields)."""
    base_id = common["image_id"]
    questions = [("modality", "Which imaging modality was used to acquire this image?", mname,
                  list(MODALITY_NAMES.values()))]
    if canonical:
        questions.append(
            ("organ", "Which organ or body region is shown in this image?", organ, _organ_vocab())
        )
    if facts is not None:
        questions += [
            ("side", f"On which side of the image is the {finding}?", facts["side"], SIDES),
            ("size", f"How large is the {finding} relative to the image?", facts["size_class"],
             SIZE_CLASSES),
        ]
    rows = []
    for qtype, question, correct, vocab in questions:
        options, letter = _mc(correct, vocab, rng_for("vlm_demo_vqa", base_id, qtype, global_seed=seed))
        rows.append({**common, "sample_id": f"{base_id}#{qtype}", "task": "vqa", "question": question,
                     "question_type": qtype, "options": options, "answer": letter, "reference": correct,
                     "box": None})
    return rows


def _caption(base_id: str, facts: Mapping[str, Any] | None, *, mname: str, organ: str, finding: str,
             canonical: bool, seed: int) -> str:
    """The reference caption of one image: a drawn template with the mask ``facts``, else a lesion-free
    one."""
    if facts is not None:
        pos, phrase = _position(facts)
        rng = rng_for("vlm_demo_caption", base_id, global_seed=seed)
        tmpl = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        caption = tmpl.format(Modality=mname, modality=mname, organ=organ, size=facts["size_class"],
                              finding=finding, position=pos, position_phrase=phrase)
    elif canonical:
        caption = f"{mname} image of the {organ}."
    else:
        caption = f"{mname} image."
    return caption[0].upper() + caption[1:]


def showcase_records(max_size: int | None = 256) -> list[dict[str, Any]]:
    """The data stage's showcase images (real images without masks) as test-split image records.

    Images larger than ``max_size`` (longest side) are downsized with anti-aliasing, keeping the dtype.
    """
    from skimage.transform import resize

    from medfm_robust.data.demo import showcase_images

    recs = []
    for name, (modality, image) in sorted(showcase_images().items()):
        img = np.asarray(image)
        h, w = img.shape[:2]
        if max_size is not None and max(h, w) > max_size:
            scale = max_size / max(h, w)
            shape = (max(1, round(h * scale)), max(1, round(w * scale)), *img.shape[2:])
            img = np.clip(np.rint(resize(img.astype(np.float64), shape, order=1, anti_aliasing=True,
                                         preserve_range=True)), 0, np.iinfo(img.dtype).max).astype(img.dtype)
        recs.append({"image_id": name, "dataset": "showcase", "modality": modality, "split": "test",
                     "image_png": encode_png(img), "mask_png": None, "height": img.shape[0],
                     "width": img.shape[1], "source": f"medfm_robust.data.demo.showcase_images:{name}"})
    return recs


def build_demo(
    shards: Sequence[str | Path], *, dataset: str, task: str, seed: int,
    organs: Mapping[str, str] | None = None, showcase: bool = True, showcase_size: int | None = 256,
    perturb_max_images: int | None = None,
) -> pd.DataFrame:
    """A demo sample table for ``task`` from canonical shards (``paths.data_shard``)
    (splits follow the canonical splits) plus, with ``showcase``, the showcase images (test split).

    ``perturb_max_images`` (the perturbation stage's ``perturb.max_images``): keep only the canonical test
    images that stage perturbs (:func:`medfm_robust.perturb.table.select_images`, same seed), so every demo
    test image's perturbed versions already exist as ``paths.perturbed_shard`` files and are reused.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown VLM task '{task}' (one of {TASKS})")
    rows: list[dict[str, Any]] = []
    for shard in sorted(str(s) for s in shards):
        path = Path(shard)
        if not path.is_file():
            raise DataError(f"{path}: canonical shard not found")
        df = pd.read_parquet(path)
        for col in ("image_id", "dataset", "modality", "split", "image_png", "mask_png", "height", "width"):
            if col not in df.columns:
                raise DataError(f"{path}: canonical shard lacks column '{col}'")
        if perturb_max_images is not None and len(df) and set(df["split"]) == {"test"}:
            from medfm_robust.perturb.table import select_images

            df = select_images(df, perturb_max_images, global_seed=seed)
        for rec in df.to_dict("records"):
            rows.extend(demo_rows_for_image(rec, dataset=dataset, tasks=[task], seed=seed, organs=organs))
    if showcase:
        for rec in showcase_records(showcase_size):
            rows.extend(demo_rows_for_image(rec, dataset=dataset, tasks=[task], seed=seed, canonical=False))
    if not rows:
        raise DataError(f"no demo {task} samples could be built from {list(shards)}")
    return to_frame(rows)



SHOWCASE_MODALITIES = ("ct", "fundus", "mri", "pathology")  # of medfm_robust.data.demo.showcase_images


def demo_sources(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Canonical datasets feeding a demo VLM dataset: ``spec['sources']`` or every ``datasets`` key."""
    sources = list(spec.get("sources") or sorted(config.get("datasets", {})))
    unknown = [s for s in sources if s not in config.get("datasets", {})]
    if unknown:
        raise ConfigError(f"vlm.datasets.*.sources: {unknown} are not keys of `datasets`")
    return sources


def demo_modalities(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Modalities of a demo VLM dataset: its source datasets' modalities plus, with ``showcase``, the
    showcase images' ones (:data:`SHOWCASE_MODALITIES`), in :data:`MODALITIES` order."""
    mods = {config["datasets"][s]["modality"] for s in demo_sources(spec, config)
            if config["datasets"][s].get("modality")}
    if with_defaults("vlm.datasets.*", spec)["showcase"]:
        mods.update(SHOWCASE_MODALITIES)
    return [m for m in MODALITIES if m in mods]


@register("demo", tasks=TASKS, needs_path=False, configurable_tasks=True, sources=demo_sources,
          modalities=demo_modalities)
def _demo_from_config(name: str, spec: Mapping[str, Any], task: str, ctx: BuildContext) -> pd.DataFrame:
    """Demo: VQA, caption and grounding samples templated from the canonical shards (and showcase images)."""
    max_images = ctx.perturb_max_images if ctx.perturb_max_images is not None else spec.get("max_test_images")
    return build_demo(ctx.shards, dataset=name, task=task, seed=ctx.seed, organs=spec.get("organs"),
                      showcase=spec["showcase"], showcase_size=spec["showcase_size"],
                      perturb_max_images=max_images)
