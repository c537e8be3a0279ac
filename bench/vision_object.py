"""Just enough of the full PixelRefer ("Vision-Object") token path to count and cost its prompt.

Full PixelRefer feeds the frame's own visual tokens to the LLM next to the object tokens (spec
§7). Nothing here runs its model; it reproduces the processor rules that fix how many tokens
reach the LLM, so that their prefill can be timed on our Qwen2 and counted with the same FLOP
counter as the Lite prompt:

- image: one processor call, `image_downsampling` 1, smart_resize (factor 14) under the
  8192-patch budget -> every patch is one LLM token;
- video: every frame, `spatial_merge_size` 2, smart_resize (factor 28) under
  mm_max_length·merge²·14² / frames pixels -> one token per 2x2 patch window (<= 8192 tokens in
  all), then VideoLLaMA3's frame-difference compressor (`_get_compression_mask`): a window is
  kept when the mean absolute change of its normalised pixels since the previous frame, times
  255, exceeds 0.1; the first frame is kept whole, every frame keeps at least one token. The
  threshold is about 0.05 grey levels: only bit-identical static pixels are pruned, so a real
  (noisy) camera keeps almost everything;
- object tokens: min(32, mask cells) per masked frame from the crop (large objects shrink to
  ~100 patches, not 50), no OCI; both kinds pass the mlp2x_gelu projector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pixelrefer_ros.model.config import PixelReferConfig, PreprocessConfig
from pixelrefer_ros.model.preprocess import (
    normalize,
    pil_bicubic_resize,
    prepare_region,
    smart_resize,
)

PRUNE_THRESHOLD = 0.1  # VideoLLaMA3 default
FULL_MAX_OBJECT_PATCHES = 100  # full PixelRefer's large-object target (Lite: 50)


@dataclass(frozen=True)
class VisualTokens:
    grids: list[tuple[int, int]]  # ViT patch grid (gh, gw) of each frame (before merging)
    kept: list[int]  # LLM tokens kept per frame after merging (and pruning)

    @property
    def total(self) -> int:
        return sum(self.kept)

    @property
    def patches(self) -> int:
        return sum(gh * gw for gh, gw in self.grids)


def image_tokens(image: np.ndarray, pcfg: PreprocessConfig) -> VisualTokens:
    """One image, downsampling 1: every 14x14 patch under the 8192-patch cap is a token."""
    h, w = image.shape[:2]
    cap = pcfg.mm_max_length * pcfg.patch_size**2  # P / (merge/1)² pixels, one image
    th, tw = smart_resize(h, w, pcfg.patch_size, pcfg.min_pixels, cap)
    grid = (th // pcfg.patch_size, tw // pcfg.patch_size)
    return VisualTokens([grid], [grid[0] * grid[1]])


def video_tokens(frames: Sequence[np.ndarray], pcfg: PreprocessConfig,
                 prune: bool = True) -> VisualTokens:
    """Frames of one clip, merge 2, optionally through the frame-difference compressor."""
    m, p = pcfg.spatial_merge_size, pcfg.patch_size
    cap = pcfg.mm_max_length * m**2 * p**2 // len(frames)  # P / (merge/2)² pixels / frames
    h, w = frames[0].shape[:2]
    th, tw = smart_resize(h, w, p * m, pcfg.min_pixels, cap)
    wh, ww = th // (p * m), tw // (p * m)  # merge windows
    grids = [(th // p, tw // p)] * len(frames)
    if not prune:
        return VisualTokens(grids, [wh * ww] * len(frames))
    prev, kept = None, []
    for frame in frames:
        img = frame if (th, tw) == (h, w) else pil_bicubic_resize(frame, th, tw)
        x = normalize(img, pcfg).reshape(wh, p * m, ww, p * m, 3).transpose(0, 2, 1, 3, 4)
        x = x.reshape(wh * ww, -1)  # [windows, 28*28*3]: one row per merged token
        if prev is None:
            kept.append(wh * ww)
        else:
            diff = np.abs(x - prev).mean(axis=1) * 255  # [windows]
            kept.append(max(int((diff > PRUNE_THRESHOLD).sum()), 1))
        prev = x
    return VisualTokens(grids, kept)


def object_tokens_full(image: np.ndarray, mask: np.ndarray, pcfg: PreprocessConfig
                       ) -> tuple[int, tuple[int, int]]:
    """(object tokens, crop grid) of one mask in full PixelRefer: min(32, cells under the mask)."""
    full = replace(pcfg, max_object_patches=FULL_MAX_OBJECT_PATCHES)
    region = prepare_region(image, mask, full)
    cells = int((region.mask_grid > 0).sum())
    crop_grid = (region.crop.shape[0] // pcfg.patch_size, region.crop.shape[1] // pcfg.patch_size)
    return min(32, cells), crop_grid


def projector_flops(cfg: PixelReferConfig, tokens: int) -> int:
    """mlp2x_gelu (C_vision -> H -> H) per token, 2 FLOPs per multiply-add."""
    c, h = cfg.vision.hidden_size, cfg.llm.hidden_size
    return 2 * tokens * (c * h + h * h)
