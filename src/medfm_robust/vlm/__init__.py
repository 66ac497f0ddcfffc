"""Vision-language robustness: sample tables, prompts, answer parsing, the API client and (model half)
the VLM adapters, tiny models and LoRA grounding fine-tuning.

Submodules: :mod:`~medfm_robust.vlm.tasks` (the task registry: vqa, caption, grounding),
:mod:`~medfm_robust.vlm.datasets` (package: the dataset-reader registry, one module per publisher, the demo
builder, sampling; the sample-table contract), :mod:`~medfm_robust.vlm.prompts` (``build_prompt``,
``target_text``, box conventions), :mod:`~medfm_robust.vlm.parsing` (package: ``parse_answer``),
:mod:`~medfm_robust.vlm.scoring` (parse raw outputs, then score them), :mod:`~medfm_robust.vlm.api`
(package: OpenAI-compatible client with retries and a persistent cache, optional LLM judge),
:mod:`~medfm_robust.vlm.cache`, :mod:`~medfm_robust.vlm.perturb` (perturbed inputs through the perturbation
engine, conditions tables). Metrics of parsed values live in :mod:`medfm_robust.metrics.vlm` and
:mod:`medfm_robust.metrics.captions` (a leaf: they import nothing from ``vlm``).
"""

from medfm_robust.vlm.parsing import Parsed, parse_answer
from medfm_robust.vlm.prompts import BOX_CONVENTIONS, SYSTEM_PROMPT, build_prompt, target_text

__all__ = ["BOX_CONVENTIONS", "SYSTEM_PROMPT", "Parsed", "build_prompt", "parse_answer", "target_text"]
