"""Host-side preprocessing: the SAOT object crop rule and the DAMOVL image processor.

Everything here is numpy/cv2 and reproduces the official uint8 outputs bit for bit (spec §1.2-1.3,
fixtures README stages 1-2), because the crops decide which pixels the ViT ever sees.

Per mask (`prepare_region`): pad the mask's bounding box by 28 px, rescale the crop so the object
covers about 32..50 patches (`object_scale`), and make the 0/1 mask grid at patch resolution.
Per processor pass (`patchify` / `patchify_pass`): fit the image under the pixel cap that the M
images of one call share, normalise to [-1, 1] and cut it into 14x14 patches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .config import PreprocessConfig

Box = tuple[int, int, int, int]  # (top, left, bottom_incl, right_incl)


@dataclass
class RegionCrop:
    """Everything the model needs about one mask (the outputs of official `resize_image_mask`)."""

    crop: np.ndarray  # uint8 [h, w, 3], sides multiples of 14: the scale-adapted padded bbox
    mask_grid: np.ndarray  # float32 [h/14, w/14] in [0, 1]; cells > 0 are the object
    box: Box  # padded bbox in original pixels, inclusive; (0, 0, 0, 0) for an empty mask
    orig_hw: tuple[int, int]  # size of the original image
    raw_global: np.ndarray  # uint8 [336, 336, 3]: the whole image, squashed
    local: np.ndarray  # uint8 [224, 224, 3]: a padded bbox crop, squashed
    local_source: int = 0  # index of the mask whose bbox `local` was cut from (cache quirk)


# ----------------------------------------------------------------------------- SAOT crop rule

def object_scale(mask_area: int, cfg: PreprocessConfig) -> float:
    """Zoom factor for an object of `mask_area` pixels (spec §1.2 step 2, §8).

    Small objects are enlarged by an integer factor until the mask covers >= 32 patches; objects
    above 50 patches are shrunk to about 50 patches. The float operations follow the official order.
    """
    patch_area = float(cfg.patch_size**2)  # 196.0
    scale: float = math.ceil(math.sqrt(patch_area * cfg.min_object_patches / max(mask_area, 1)))
    if scale == 1 and mask_area / patch_area > cfg.max_object_patches:
        scale = 1.0 / math.sqrt((mask_area / patch_area) / cfg.max_object_patches)
    return float(scale)


def scaled_side(side: int, scale: float, patch_size: int = 14) -> int:
    """Crop side after scaling, rounded up to a whole number of patches."""
    return int(math.ceil((side * scale) / patch_size) * patch_size)


def padded_box(mask01: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the nonzero pixels grown by `pad` and clipped: (top, left, bottom_excl,
    right_excl), or None for an empty mask."""
    points = cv2.findNonZero(mask01)
    if points is None:
        return None
    x, y, bw, bh = cv2.boundingRect(points)
    h, w = mask01.shape
    return max(0, y - pad), max(0, x - pad), min(h, y + bh + pad), min(w, x + bw + pad)


def scaled_crop(mask01: np.ndarray, cfg: PreprocessConfig
                ) -> tuple[tuple[int, int, int, int], tuple[int, int]] | None:
    """The SAOT crop of a 0/1 mask: its padded box (top, left, bottom_excl, right_excl) and
    the crop's size (out_h, out_w) after the scale rule; None for an empty mask."""
    bbox = padded_box(mask01, cfg.bbox_pad)
    if bbox is None:
        return None
    top, left, bottom, right = bbox
    scale = object_scale(int(mask01.sum(dtype=np.int64)), cfg)
    return bbox, (scaled_side(bottom - top, scale, cfg.patch_size),
                  scaled_side(right - left, scale, cfg.patch_size))


def crop_patches(mask: np.ndarray, cfg: PreprocessConfig, num_images: int = 1) -> int:
    """ViT patches of the mask's scale-adapted crop after the image processor: what encoding
    this object costs (0 for an empty mask, which is encoded as one black patch). The same
    rules as `prepare_region` + `patchify`, without touching the pixels."""
    crop = scaled_crop((np.asarray(mask) > 0).astype(np.uint8), cfg)
    if crop is None:
        return 0
    out_h, out_w = crop[1]
    th, tw = smart_resize(out_h, out_w, cfg.patch_size, cfg.min_pixels,
                          pixel_cap(num_images, cfg))
    return (th // cfg.patch_size) * (tw // cfg.patch_size)


def global_image(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The whole frame squashed to 336x336 (INTER_AREA, aspect not kept): OCI's global context."""
    g = cfg.global_size
    return cv2.resize(image, (g, g), interpolation=cv2.INTER_AREA)


def _context_images(image: np.ndarray, local_src: np.ndarray, cfg: PreprocessConfig):
    """The two squashed context images: whole frame -> 336 and `local_src` -> 224 (INTER_AREA)."""
    s = cfg.local_size
    return global_image(image, cfg), cv2.resize(local_src, (s, s), interpolation=cv2.INTER_AREA)


def prepare_region(image: np.ndarray, mask: np.ndarray, cfg: PreprocessConfig) -> RegionCrop:
    """Crop, scale and grid one mask; `local` is cut from this mask's own padded bbox.

    image: uint8 [H, W, 3] RGB. mask: [H, W], nonzero = object. The official contract is a 0/1
    mask; we binarise first so that a 0/255 mask cannot change the area in the scale rule.
    """
    if image.ndim != 3 or mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be [H,W,3] and [H,W]")
    h, w = image.shape[:2]
    mask01 = (np.asarray(mask) > 0).astype(np.uint8)
    crop_rule = scaled_crop(mask01, cfg)
    if crop_rule is None:  # empty mask: one black patch, no valid cell, whole-image context (§9.4)
        p = cfg.patch_size
        raw, local = _context_images(image, image, cfg)
        return RegionCrop(crop=np.zeros((p, p, image.shape[2]), dtype=image.dtype),
                          mask_grid=np.zeros((1, 1), dtype=np.float32), box=(0, 0, 0, 0),
                          orig_hw=(h, w), raw_global=raw, local=local)

    (top, left, bottom, right), (out_h, out_w) = crop_rule  # bottom/right exclusive
    crop_src = image[top:bottom, left:right, :]
    mask_src = mask01[top:bottom, left:right]
    crop_h, crop_w = bottom - top, right - left
    # LINEAR when either side grows *or stays equal* (spec §8), AREA only when both shrink.
    grows = out_h >= crop_h or out_w >= crop_w
    interp = cv2.INTER_LINEAR if grows else cv2.INTER_AREA
    crop = cv2.resize(crop_src, (out_w, out_h), interpolation=interp)
    grid_hw = (out_h // cfg.patch_size, out_w // cfg.patch_size)
    mask_grid = cv2.resize(mask_src.astype(np.float32), (grid_hw[1], grid_hw[0]),
                           interpolation=cv2.INTER_LINEAR)
    raw, local = _context_images(image, crop_src, cfg)
    return RegionCrop(crop=crop, mask_grid=mask_grid.reshape(grid_hw),
                      box=(top, left, bottom - 1, right - 1), orig_hw=(h, w),
                      raw_global=raw, local=local)


def prepare_regions(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    mask_ids: Sequence[int], cfg: PreprocessConfig,
                    share_first_local: bool = True) -> list[RegionCrop]:
    """`prepare_region` for every mask; mask i lies on `images[mask_ids[i]]`.

    share_first_local=True reproduces the official per-image cache (spec §1.2 step 6): every mask
    of an image gets the 336/224 context images of the *first* mask on that image (for an empty
    first mask that is the whole image). The released weights were trained with this code path.
    False gives each mask the 224 crop of its own bbox.
    """
    if len(masks) != len(mask_ids):
        raise ValueError(f"{len(masks)} masks but {len(mask_ids)} mask_ids")
    regions: list[RegionCrop] = []
    first_of_image: dict[int, RegionCrop] = {}
    for i, (mask, img_id) in enumerate(zip(masks, mask_ids, strict=True)):
        region = prepare_region(images[img_id], mask, cfg)
        region.local_source = i
        if share_first_local:
            first = first_of_image.setdefault(img_id, region)
            region.raw_global, region.local = first.raw_global, first.local
            region.local_source = first.local_source
        regions.append(region)
    return regions


# ----------------------------------------------------------------------------- image processor

def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target size for the processor (DAMOVL/Qwen2-VL rule).

    Round both sides to multiples of `factor`; above `max_pixels` floor them at the same aspect
    ratio; below `min_pixels` ceil them up. Sides under `factor` are first enlarged to it.
    """
    if h < factor or w < factor:
        up = factor / min(h, w)
        h, w = round(up * h), round(up * w)
    elif max(h, w) / min(h, w) > 200:
        raise ValueError(f"aspect ratio must be at most 200, got {max(h, w) / min(h, w):.1f}")
    h_bar, w_bar = round(h / factor) * factor, round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        h_bar = math.floor(h / beta / factor) * factor
        w_bar = math.floor(w / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def pixel_cap(num_images: int, cfg: PreprocessConfig) -> int:
    """Pixel budget of one image when `num_images` share a processor call (1,605,632 // M)."""
    merged = int(cfg.max_pixels / (cfg.spatial_merge_size / 1) ** 2)  # image_downsampling = 1
    return merged // num_images


def pil_bicubic_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`PIL.Image.resize((w, h), BICUBIC)` of a uint8 [H, W, 3] image, as the official processor
    resizes (transformers `resize`, resample=3). Only the M >= 15 caps and huge crops resize."""
    return np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.BICUBIC))


def normalize(image_u8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 with the official arithmetic: (float64 * 1/255 -> float32 -
    mean) / std, per channel.

    Each output depends only on (code, channel), so the arithmetic runs once on the 256 codes
    and `cv2.LUT` maps the image (~8x faster than the arithmetic on every pixel, same bits).
    With mean = std = 0.5 this equals `v.astype(float32) / 127.5 - 1` bit for bit (README §9.6).
    """
    table = _normalize_table(tuple(cfg.image_mean), tuple(cfg.image_std))
    return cv2.LUT(np.ascontiguousarray(image_u8), table)


@functools.lru_cache(maxsize=8)
def _normalize_table(image_mean: tuple[float, ...], image_std: tuple[float, ...]) -> np.ndarray:
    """`normalize`'s table [1, 256, 3] float32, built once per processor's constants (every
    frame and every crop is normalised)."""
    mean = np.asarray(image_mean, dtype=np.float32)
    std = np.asarray(image_std, dtype=np.float32)
    codes = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)[:, None]
    table = ((codes - mean) / std).reshape(1, 256, 3)
    table.flags.writeable = False  # shared by every call
    return table


def patchify(image_u8: np.ndarray, num_images: int,
             cfg: PreprocessConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """One image of a processor call with `num_images` images -> (pixel_values [P, 588], (gh, gw)).

    Rows are 14x14 patches in raster order, each flattened channel-first (C, 14, 14).
    """
    p = cfg.patch_size
    h, w = image_u8.shape[:2]
    th, tw = smart_resize(h, w, p, cfg.min_pixels, pixel_cap(num_images, cfg))
    if (th, tw) != (h, w):
        image_u8 = pil_bicubic_resize(image_u8, th, tw)
    x = normalize(image_u8, cfg)  # [H, W, 3]
    gh, gw = th // p, tw // p
    x = x.reshape(gh, p, gw, p, 3).transpose(0, 2, 4, 1, 3)  # [gh, gw, 3, 14, 14]
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * p * p)), (gh, gw)


def patchify_pass(images: Sequence[np.ndarray],
                  cfg: PreprocessConfig) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One official processor call: all images share the cap -> packed [sum P, 588] and grids."""
    outs = [patchify(img, len(images), cfg) for img in images]
    return np.concatenate([pv for pv, _ in outs], axis=0), [g for _, g in outs]
