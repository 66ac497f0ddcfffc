"""LLaVA-Med v1.5 inputs as the LLaVA code base builds them, for a folder converted by
:mod:`medfm_robust.vlm.convert_llava`.

Three things differ from ``transformers``' own ``LlavaProcessor`` and are reproduced here
(LLaVA-Med repository, ``llava/mm_utils.py`` and ``llava/conversation.py``):

- images are padded to a square with the image processor's mean colour (``image_aspect_ratio: pad``)
  before the CLIP processor (which then resizes the shortest edge and centre-crops, cutting nothing);
- the prompt is the ``mistral_instruct`` conversation: ``[INST] <image>\\n{prompt} [/INST]``, no system text;
- the text on each side of ``<image>`` is tokenised separately (each chunk as a whole sentence, only the
  first keeps its BOS) and the image takes the place of the index -200 between them; here the image
  position is filled with ``num_image_tokens`` copies of the ``<image>`` token id, which the ``transformers``
  LLaVA model replaces by the projected CLIP patch features one for one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfm_robust.errors import CheckpointError

MARKER = "llava_med.json"  # written by the converter: how the original preprocesses (read at load time)
IMAGE_PLACEHOLDER = "<image>"

# LLaVA's ``conv_mistral_instruct`` (SeparatorStyle.LLAMA_2, system "", sep "", sep2 "</s>") as a chat
# template over ``transformers`` message lists. The first user turn gets "<image>\n" in front when it holds an
# image (LLaVA moves the image to the front); a system text is wrapped in <<SYS>> as LLAMA_2 does.
MISTRAL_INSTRUCT_TEMPLATE = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- set text = namespace(value='', image=false) -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' -%}{%- set text.image = true -%}"
    "{%- elif item['type'] == 'text' -%}{%- set text.value = text.value + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = text.value -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set body = ('<image>\\n' if text.image else '') + text.value.strip() -%}"
    "{%- if ns.first and ns.system -%}"
    "{%- set body = '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' + body -%}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{{- '[INST] ' + body + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + text.value + ' </s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def pad_to_square(image: Any, image_mean: Sequence[float]) -> Any:
    """``image`` (PIL, RGB) padded to a square with the mean colour ``int(255 * mean_c)`` per channel.

    LLaVA's ``expand2square`` puts the image at a random offset of ``(long - short) // 2`` or one more
    pixel; here always ``(long - short) // 2`` (deterministic; the one-pixel jitter is dropped).
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    colour = tuple(int(x * 255) for x in image_mean)
    side = max(width, height)
    out = Image.new(image.mode, (side, side), colour)
    out.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return out


class LlavaMedProcessor:
    """LLaVA-Med preprocessing over a converted folder's ``LlavaProcessor`` (its tokenizer, CLIP image
    processor and chat template; the template falls back to ``mistral_instruct`` when the folder has none).

    Args:
        processor: the folder's ``LlavaProcessor``.
        num_image_tokens: image positions per image (CLIP patches without CLS: ``(image_size / patch)^2``).
        pad: pad images to a square with the mean colour first (``image_aspect_ratio: pad``).
    """

    def __init__(self, processor: Any, num_image_tokens: int, *, pad: bool = True) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.num_image_tokens = int(num_image_tokens)
        self.pad = pad
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.chat_template = getattr(processor, "chat_template", None) or MISTRAL_INSTRUCT_TEMPLATE

    @classmethod
    def from_folder(cls, path: str | Path, processor: Any) -> LlavaMedProcessor:
        """Build from a converted folder (its :data:`MARKER` file) and its loaded ``processor``."""
        marker = Path(path) / MARKER
        try:
            info = json.loads(marker.read_text())
            return cls(processor, int(info["num_image_tokens"]), pad=info["image_aspect_ratio"] == "pad")
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{marker}: unreadable LLaVA-Med preprocessing record ({exc})") from exc

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        """The conversation as text (``mistral_instruct`` ends at ``[/INST]``; no generation prompt)."""
        if tokenize:
            raise ValueError("LlavaMedProcessor renders text only; tokenisation happens in __call__")
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def token_ids(self, text: str) -> list[int]:
        """``text`` as LLaVA's ``tokenizer_image_token`` makes it, each image index expanded to
        ``num_image_tokens`` copies of the ``<image>`` id."""
        chunks = [self.tokenizer(chunk, add_special_tokens=True)["input_ids"]
                  for chunk in text.split(IMAGE_PLACEHOLDER)]
        bos = self.tokenizer.bos_token_id
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i > 0:
                ids.extend([self.image_token_id] * self.num_image_tokens)
                if chunk and chunk[0] == bos:
                    chunk = chunk[1:]
            ids.extend(chunk)
        return ids

    def pixel_values(self, images: Sequence[Any]) -> Any:
        """``N x 3 x S x S`` float32 tensor: mean-colour square padding, then the CLIP image processor."""
        mean = self.image_processor.image_mean
        padded = [pad_to_square(im.convert("RGB"), mean) if self.pad else im.convert("RGB") for im in images]
        return self.image_processor(images=padded, return_tensors="pt")["pixel_values"]

    def __call__(self, *, text: Sequence[str], images: Sequence[Sequence[Any]] | None = None,
                 padding: bool = True, return_tensors: str = "pt") -> dict[str, Any]:
        """``input_ids`` / ``attention_mask`` (left-padded with the pad id) and ``pixel_values``; one image
        per text (``images[i]`` a list with one PIL image), as the LLaVA-Med evaluation feeds it."""
        import torch

        if return_tensors != "pt":
            raise ValueError("LlavaMedProcessor returns torch tensors only")
        rows = [self.token_ids(t) for t in text]
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if images is not None:
            flat = [im for group in images for im in group]
            n_placeholders = sum(t.count(IMAGE_PLACEHOLDER) for t in text)
            if n_placeholders != len(flat):
                raise ValueError(f"{len(flat)} images for {n_placeholders} <image> placeholders")
            out["pixel_values"] = self.pixel_values(flat)
        return out


def num_image_tokens(image_size: int, patch_size: int) -> int:
    """CLIP patch positions per image without the CLS token (LLaVA's ``mm_vision_select_feature: patch``)."""
    return int(image_size // patch_size) ** 2

