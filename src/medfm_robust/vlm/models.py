"""One interface for every vision-language model: local ``transformers`` checkpoints, tiny demo models, APIs.

A model is built from its config entry (``vlm.models.<name>``) by :func:`load_vlm` and answers
``generate(images, prompts, task, max_new_tokens) -> list[str]`` (one raw output per input, in order). Every
model carries a ``revision`` string (weights and adapter hash, or the API model name) that is written beside
each result so numbers can be traced to the exact weights.

Local models (``medgemma``, ``medgemma_1_5``: Gemma 3 image-text-to-text; ``llava_med``: LLaVA-Med v1.5
converted to ``transformers``' Llava format by ``medfm-robust vlm-convert llava-med``; ``tiny_llava`` /
``tiny_gemma3``) are loaded from a folder with ``AutoProcessor`` and ``AutoModelForImageTextToText``; prompts
are rendered with the processor's own chat template; decoding is greedy; batches are left-padded so that the
new tokens of every row start at the same position. A converted LLaVA-Med folder (it holds ``llava_med.json``)
is fed as the LLaVA code base feeds it (:class:`medfm_robust.vlm.llava_med.LlavaMedProcessor`: mean-colour
square padding, ``mistral_instruct`` prompt, chunk-wise tokenisation around the image).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medfm_robust.config import with_defaults
from medfm_robust.devices import pick_device
from medfm_robust.errors import CheckpointError, ConfigError
from medfm_robust.intensity import dtype_value_range, to_rgb8
from medfm_robust.vlm.llava_med import MARKER as LLAVA_MED_MARKER
from medfm_robust.vlm.tasks import TASKS

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
_FULL_HASH_LIMIT = 64 * 1024 * 1024  # files up to this size are hashed whole; larger ones by head+tail+size


class VisionLanguageModel(Protocol):
    """What the evaluation needs from a model."""

    name: str
    revision: str

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], task: str, max_new_tokens: int
    ) -> list[str]:
        """One raw text answer per (image, prompt) pair; images ``H x W`` or ``H x W x 3``, uint8/uint16."""
        ...


def to_pil_rgb(image: np.ndarray) -> Any:
    """An ``H x W`` or ``H x W x 3`` uint8/uint16 array as an 8-bit RGB ``PIL.Image``: VLM samples carry no
    ``value_range``, so uint16 means the dtype's range (``value / 257``), never min-max stretched."""
    from PIL import Image

    arr = np.asarray(image)
    return Image.fromarray(to_rgb8(arr, dtype_value_range(arr), "VLM input image"), mode="RGB")


def folder_revision(path: str | Path) -> str:
    """A short stable hash of a model folder's files (names, sizes and content; big files by head+tail).

    Files up to 64 MiB are hashed whole; larger weight shards by size plus their first and last MiB, so
    that a 8 GB checkpoint costs milliseconds while any re-download or different shard changes it.
    """
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(root).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\x1f{size}\x1f".encode())
        with open(f, "rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def resolve_model_dir(name: str, spec: dict[str, Any], resources_dir: str | Path) -> Path:
    """The local folder of model ``name`` (``spec['path']`` under ``resources_dir``), checked to exist."""
    if not spec.get("path"):
        raise ConfigError(f"config key 'vlm.models.{name}.path': required for a local model")
    path = Path(spec["path"])
    if not path.is_absolute():
        path = Path(resources_dir) / path
    if not path.is_dir():
        raise CheckpointError(
            f"vlm model '{name}': model folder {path} not found (config key 'vlm.models.{name}.path'); "
            "download the checkpoint there as described in resources/README.md"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"vlm model '{name}': {path} has no config.json (not a transformers checkpoint)"
        )
    return path


class LocalVLM:
    """A ``transformers`` image-text-to-text model and its processor, answering greedily in batches.

    Args:
        name: model name (config key).
        model: a loaded ``*ForConditionalGeneration`` (eval mode, on its device).
        processor: its processor (chat template, tokenizer, image processor).
        revision: identity of the weights (see :func:`folder_revision`).
        batch_size: prompts per ``generate`` call (left padding).
        system_prompt: optional system turn (dropped by chat templates without a system role).
        image_position: ``before`` or ``after`` the text in the user turn.
        processor_settings: what the processor applies, checked against the folder's files (Gemma 3; see
            :mod:`medfm_robust.vlm.processor_check`).
    """

    def __init__(
        self,
        name: str,
        model: Any,
        processor: Any,
        *,
        revision: str,
        batch_size: int = 8,
        system_prompt: str | None = None,
        image_position: str = "before",
        processor_settings: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = int(batch_size)
        self.system_prompt = system_prompt
        self.image_position = image_position
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.revision = revision
        self.processor_settings = dict(processor_settings or {})

    def render(self, prompt: str, with_image: bool = True) -> str:
        """The full model input text for one user prompt (chat template, generation prompt added); without
        the image entry when ``with_image`` is False (the image-blind control)."""
        image = {"type": "image"}
        text = {"type": "text", "text": prompt}
        content = [image, text] if self.image_position == "before" else [text, image]
        content = content if with_image else [text]
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, images: Sequence[np.ndarray | None], texts: Sequence[str]) -> dict[str, Any]:
        """Processor outputs (left-padded ``input_ids``, ``attention_mask``, ``pixel_values``) on device;
        text only when every image is None (a batch never mixes the two)."""
        if all(img is None for img in images):
            enc = self.processor(text=list(texts), padding=True, return_tensors="pt")
        else:
            pil = [[to_pil_rgb(img)] for img in images]
            enc = self.processor(text=list(texts), images=pil, padding=True, return_tensors="pt")
        out = {}
        for key, value in enc.items():
            value = value.to(self.device)
            if key == "pixel_values":
                value = value.to(self.dtype)
            out[key] = value
        return out

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], task: str, max_new_tokens: int
    ) -> list[str]:
        """Greedy answers, one per (image, prompt), decoded from the newly generated tokens only."""
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = slice(start, start + self.batch_size)
            pairs = zip(prompts[batch], images[batch], strict=True)
            texts = [self.render(p, image is not None) for p, image in pairs]
            enc = self.encode(images[batch], texts)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=int(max_new_tokens),
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return answers


def load_local_vlm(
    name: str,
    path: str | Path,
    *,
    dtype: str = "bfloat16",
    batch_size: int = 8,
    system_prompt: str | None = None,
    image_position: str = "before",
    adapter_dir: str | Path | None = None,
    device: str | None = None,
) -> LocalVLM:
    """Load a checkpoint folder with ``AutoProcessor`` / ``AutoModelForImageTextToText`` (plus an optional
    ``peft`` adapter folder, merged into the weights) as a :class:`LocalVLM`."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if dtype not in DTYPES:
        raise ConfigError(f"config key 'vlm.models.{name}.dtype': {dtype!r} not in {sorted(DTYPES)}")
    device = pick_device(device, f"vlm model {name!r}: device")
    torch_dtype = getattr(torch, DTYPES[dtype])
    if device.type == "cpu" and torch_dtype != torch.float32:
        log.warning("%s: %s weights on CPU are slow; consider dtype float32 for CPU runs", name, dtype)
    path = Path(path)
    # PIL image backend: resizes the 8-bit image as the released (slow) image processors do; transformers'
    # default torchvision backend resizes in float and differs by up to 2/255 per pixel
    processor = AutoProcessor.from_pretrained(path, backend="pil")
    settings: dict[str, Any] = {}
    if (path / LLAVA_MED_MARKER).is_file():  # converted LLaVA-Med: the original's padding and tokenisation
        from medfm_robust.vlm.llava_med import LlavaMedProcessor

        processor = LlavaMedProcessor.from_folder(path, processor)
    elif json.loads((path / "config.json").read_text()).get("model_type") == "gemma3":
        from medfm_robust.vlm.processor_check import check_processor_parity

        settings = check_processor_parity(path, processor)  # MedGemma: settings as the folder declares
        log.info("%s: processor settings %s", name, settings)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
    revision = folder_revision(path)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").is_file():
            raise CheckpointError(f"{adapter}: not a peft adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        revision = f"{revision}+lora-{folder_revision(adapter)}"
    model = model.to(device).eval()
    return LocalVLM(name, model, processor, revision=f"{name}@{revision}", batch_size=batch_size,
                    system_prompt=system_prompt, image_position=image_position, processor_settings=settings)


class ApiVLM:
    """A chat-completions API model through the shared cached, retrying client
    (:class:`medfm_robust.vlm.api.APIClient`); ``system_prompt=None`` uses the shared default."""

    def __init__(self, name: str, client: Any, revision: str, system_prompt: str | None = None) -> None:
        self.name = name
        self.client = client
        self.revision = revision
        self.system_prompt = system_prompt

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], task: str, max_new_tokens: int
    ) -> list[str]:
        """Answers through the cached, retrying API client (concurrency is the client's business)."""
        from medfm_robust.vlm import api

        return api.generate_batch(
            self.client,
            images=list(images),
            prompts=list(prompts),
            system_prompt=self.system_prompt,
            max_tokens=int(max_new_tokens),
        )


def load_vlm(
    name: str,
    spec: dict[str, Any],
    *,
    resources_dir: str | Path = "resources",
    model_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    device: str | None = None,
    api_settings: dict[str, Any] | None = None,
    cache_path: str | Path | None = None,
) -> VisionLanguageModel:
    """Build model ``name`` from its config entry ``spec`` (``vlm.models.<name>``).

    Local models come from ``model_dir`` when given (tiny models trained by the workflow), else from
    ``spec['path']`` under ``resources_dir``; a missing folder raises :class:`CheckpointError` naming it.
    API models need ``api_settings`` (``vlm.api``) and a ``cache_path`` for the persistent answer cache.
    """
    spec = with_defaults("vlm.models.*", spec)
    kind = spec.get("kind")
    if kind in ("local", "tiny"):
        if model_dir is None:
            if kind == "tiny":
                raise ConfigError(f"vlm model '{name}': tiny models are loaded from the trained folder")
            model_dir = resolve_model_dir(name, spec, resources_dir)
        elif not Path(model_dir).is_dir():
            raise CheckpointError(f"vlm model '{name}': model folder {model_dir} not found")
        return load_local_vlm(
            name,
            model_dir,
            dtype=spec["dtype"],
            batch_size=spec["batch_size"],
            system_prompt=spec["system_prompt"],
            image_position=spec["image_position"],
            adapter_dir=adapter_dir,
            device=device,
        )
    if kind == "api":
        from medfm_robust.vlm import api

        if cache_path is None:
            raise ValueError("API models need a cache folder")
        client = api.make_client(name, spec, api_settings or {}, cache_path)
        return ApiVLM(name, client, revision=f"{name}@{client.endpoint.model}",
                      system_prompt=spec.get("system_prompt"))
    raise ConfigError(f"config key 'vlm.models.{name}.kind': {kind!r} not in ['api', 'local', 'tiny']")


def box_convention(name: str, spec: dict[str, Any], api_settings: dict[str, Any] | None = None) -> str:
    """The box convention of model ``name``: its own setting, else its API endpoint's, else pixel."""
    if spec.get("box_convention"):
        return str(spec["box_convention"])
    if spec.get("kind") == "api":
        endpoint = (api_settings or {}).get("endpoints", {}).get(name, {})
        if endpoint.get("box_convention"):
            return str(endpoint["box_convention"])
    return "pixel"


def set_torch_threads(threads: int | None = None) -> None:
    """Use ``threads`` torch threads (the job's Snakemake threads), else ``OMP_NUM_THREADS`` if set, so that
    parallel jobs do not oversubscribe the cores."""
    import torch

    n = threads if threads else os.environ.get("OMP_NUM_THREADS")
    if n and str(n).isdigit():
        torch.set_num_threads(max(1, int(n)))
