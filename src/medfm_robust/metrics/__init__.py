"""Per-image metrics shared by the segmentation, VLM and report stages."""

from medfm_robust.metrics.segmentation import (
    dice,
    hd95,
    iou,
    normalized_surface_dice,
    segmentation_scores,
)
from medfm_robust.metrics.vlm import (
    box_iou,
    grounding_summary,
    metrics_table,
    score_samples,
    summarise,
    vqa_accuracy,
)

__all__ = ["dice", "hd95", "iou", "normalized_surface_dice", "segmentation_scores"]
__all__ += ["box_iou", "grounding_summary", "metrics_table", "score_samples", "summarise", "vqa_accuracy"]
