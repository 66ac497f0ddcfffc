"""One palette and one set of display labels for every figure and table.

Strategies take their label and colour from their registered definitions
(:mod:`medfm_robust.seg.strategy_registry`), known models from the fixed tables below (so a strategy or a
model has the same colour in every panel and every run); an unknown name gets a stable colour from a hash
of its name, never from its position in a list.
"""

from __future__ import annotations

from medfm_robust.seeding import unit_hash
from medfm_robust.seg.strategy_registry import STRATEGY_SPECS

# Strategies: from their registered definitions (order, label, colour).
STRATEGY_ORDER: tuple[str, ...] = tuple(STRATEGY_SPECS)
STRATEGY_LABELS: dict[str, str] = {n: d.label for n, d in STRATEGY_SPECS.items()}
STRATEGY_COLORS: dict[str, str] = {n: d.colour for n, d in STRATEGY_SPECS.items()}
# Models (segmentation and VLM); tests check that every registered segmentation model is listed.
MODEL_LABELS = {
    "tiny_sam": "Tiny SAM",
    "lite_medsam": "LiteMedSAM",
    "medsam": "MedSAM",
    "sam_med2d": "SAM-Med2D",
    "sam_vit_b": "SAM ViT-B",
    "sam": "SAM",
    "llava_med": "LLaVA-Med",
    "medgemma": "MedGemma",
    "medgemma_1_5": "MedGemma-1.5",
    "gpt_4o_mini": "GPT-4o-mini",
    "gemini_2_5_flash": "Gemini-2.5-flash",
    "tiny_llava": "Tiny LLaVA",
    "tiny_gemma3": "Tiny Gemma 3",
}
MODEL_COLORS = {
    "tiny_sam": "#17becf",
    "lite_medsam": "#bcbd22",
    "medsam": "#1f77b4",
    "sam_med2d": "#ff7f0e",
    "sam_vit_b": "#7f7f7f",
    "sam": "#7f7f7f",
    "llava_med": "#2ca02c",
    "medgemma": "#9467bd",
    "medgemma_1_5": "#e377c2",
    "gpt_4o_mini": "#d62728",
    "gemini_2_5_flash": "#8c564b",
    "tiny_llava": "#17becf",
    "tiny_gemma3": "#bcbd22",
}
CATEGORY_COLORS = {"base": "#4c72b0", "medical": "#dd8452", "adversarial": "#55a868", "clean": "#8c8c8c"}
CLEAN_PERTURBED_COLORS = {"clean": "#4c72b0", "perturbed": "#c44e52", "blank image": "#9e9e9e"}
TASK_LABELS = {"vqa": "VQA", "caption": "Captioning", "grounding": "Grounding"}


def _hashed_color(name: str) -> str:
    """A stable mid-saturation colour for a name not in the fixed tables."""
    import colorsys

    r, g, b = colorsys.hls_to_rgb(unit_hash("palette", name), 0.45, 0.6)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def strategy_color(name: str) -> str:
    """Hex colour of a fine-tuning strategy."""
    return STRATEGY_COLORS.get(name) or _hashed_color(f"strategy:{name}")


def model_color(name: str) -> str:
    """Hex colour of a model (segmentation or VLM)."""
    return MODEL_COLORS.get(name) or _hashed_color(f"model:{name}")


def category_color(name: str) -> str:
    """Hex colour of a perturbation category (base / medical / adversarial / clean)."""
    return CATEGORY_COLORS.get(name) or _hashed_color(f"category:{name}")


def label(name: str) -> str:
    """Display label of a strategy, model or task (the name itself, prettified, when unknown)."""
    for table in (STRATEGY_LABELS, MODEL_LABELS, TASK_LABELS):
        if name in table:
            return table[name]
    return str(name).replace("_", " ")


def strategy_sort_key(name: str) -> tuple[int, str]:
    """Sort strategies in the paper's order, unknown ones after, alphabetically."""
    return (STRATEGY_ORDER.index(name) if name in STRATEGY_ORDER else len(STRATEGY_ORDER), name)


#: Display names of the segmentation metrics (tables and figures).
METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "nsd": "NSD"}
