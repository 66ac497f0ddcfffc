"""The common interface of every segmentation model, the SAM ViT modules and the batched SAM mask decoder."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Sequence

import torch
from torch import nn

from medfm_robust.errors import DataError


def sam_modeling() -> types.ModuleType:
    """``segment_anything.modeling`` (SAM's ViT, prompt encoder, mask decoder, two-way transformer).

    Imported without running the package's ``__init__``, which imports the automatic mask generator and with
    it torchvision and ``torch._dynamo``: 2.6 s of CPU per job that builds a SAM model (measured on the 2-core
    development machine; every segmentation job of the workflow pays it). The bare parent package is only in
    ``sys.modules`` during this import, so a later ``import segment_anything`` still gets the full package
    (reusing the same ``modeling`` module and classes).
    """
    name = "segment_anything.modeling"
    if name in sys.modules or "segment_anything" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("segment_anything is not installed (see requirements.lock)")
    bare = types.ModuleType("segment_anything")
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__spec__ = spec
    sys.modules["segment_anything"] = bare
    try:
        return importlib.import_module(name)
    finally:
        if sys.modules.get("segment_anything") is bare:
            del sys.modules["segment_anything"]


class PromptableSegmenter(nn.Module):
    """Common interface: ``preprocess`` -> ``encode`` -> ``decode`` and a differentiable ``forward``.

    Subclasses define :meth:`preprocess`, :meth:`input_boxes` (box transform) and :meth:`postprocess`
    (low-res logits back to the original size). State-dict keys are ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*`` as in the official checkpoints.
    """

    name: str = "segmenter"
    input_size: int = 256

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.checkpoint_hash = "random-init"

    # -- to override -----------------------------------------------------------------------------------------
    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        """``B x 1|3 x H x W`` in [0, 1] -> ``B x 3 x S x S`` model input (S = ``input_size``)."""
        raise NotImplementedError

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Original-pixel boxes ``B x 4`` -> boxes in the model's input frame ``B x 4``."""
        raise NotImplementedError

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res decoder logits ``B x 1 x h x w`` -> logits ``B x 1 x H x W`` at the original size."""
        raise NotImplementedError

    # -- common ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``B x C x h x w`` from ``B x 1|3 x H x W`` pixels in [0, 1]."""
        return self.image_encoder(self.preprocess(x01))

    def decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
                       orig_hw: tuple[int, int]) -> torch.Tensor:
        """Decoder logits ``B x 1 x h x w`` (single-mask output, mask token 0), one box per image."""
        return self._decode_low_res(embeddings, boxes_px, orig_hw)

    def _decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor, orig_hw: tuple[int, int],
                        best_of_multimask: bool = False) -> torch.Tensor:
        if boxes_px.ndim != 2 or boxes_px.shape[1] != 4 or boxes_px.shape[0] != embeddings.shape[0]:
            raise DataError(f"boxes must be B x 4 with B={embeddings.shape[0]}, got {tuple(boxes_px.shape)}")
        boxes = self.input_boxes(boxes_px.to(embeddings.device), orig_hw)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        return batched_mask_decoder(self.mask_decoder, embeddings, self.prompt_encoder.get_dense_pe(),
                                    sparse, dense, best_of_multimask)

    def decode(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
               orig_hw: tuple[int, int]) -> torch.Tensor:
        """Logits ``B x 1 x H x W`` at the original size ``orig_hw`` from embeddings and pixel boxes."""
        return self.postprocess(self.decode_low_res(embeddings, boxes_px, orig_hw), orig_hw)

    def forward(self, x01: torch.Tensor, boxes_px: torch.Tensor) -> torch.Tensor:
        """End-to-end logits ``B x 1 x H x W`` from pixels in [0, 1]; differentiable w.r.t. ``x01``."""
        orig_hw = (int(x01.shape[-2]), int(x01.shape[-1]))
        return self.decode(self.encode(x01), boxes_px, orig_hw)


def batched_mask_decoder(decoder: nn.Module, embeddings: torch.Tensor, image_pe: torch.Tensor,
                         sparse: torch.Tensor, dense: torch.Tensor, best_of_multimask: bool = False,
                         ) -> torch.Tensor:
    """Run a SAM ``MaskDecoder`` with one prompt per image of a batch; returns ``B x 1 x h x w`` logits.

    ``best_of_multimask=False``: mask token 0 (``multimask_output=False``). ``True``: of the three multimask
    outputs (tokens 1-3), the one with the highest predicted IoU per image (SAM-Med2D's predictor and
    ``test.py``). The stock ``MaskDecoder.predict_masks`` repeats ONE image embedding for every prompt; here
    image ``i`` is paired with prompt ``i`` (the mathematics of one image with one prompt is unchanged).
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat((tokens, sparse), dim=1)
    src = embeddings + dense
    pos = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = decoder.output_upscaling(src)
    b, c, h, w = upscaled.shape
    if not best_of_multimask:
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        return (hyper[:, None, :] @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    n = decoder.num_mask_tokens
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(1, n)], dim=1)
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, n - 1, h, w)
    best = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:].argmax(dim=1)
    return masks[torch.arange(b, device=masks.device), best][:, None]


def sam_modules(embed_dim: int, depth: int, num_heads: int, global_attn: Sequence[int], img_size: int,
                 ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """SAM ViT image encoder, prompt encoder and mask decoder (segment_anything's ``_build_sam`` sizes)."""
    sam = sam_modeling()
    ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer = (
        sam.ImageEncoderViT, sam.MaskDecoder, sam.PromptEncoder, sam.TwoWayTransformer
    )
    prompt_dim = 256
    grid = img_size // 16
    encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(global_attn), window_size=14,
        out_chans=prompt_dim,
    )
    prompt = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                           input_image_size=(img_size, img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return encoder, prompt, decoder
