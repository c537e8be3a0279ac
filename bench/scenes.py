"""A deterministic camera stream for the benches: N moving objects on a static textured scene.

The synthetic shapes world has at most 4 objects and redraws its background noise every frame;
the benches need 1..16 tracked objects at any resolution, and a static camera whose unchanged
pixels are bit-identical from frame to frame (the best case for the full PixelRefer video
token pruner, see vision_object.py). `sensor_noise` adds the per-frame noise of a real camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Clip:
    frames: list[np.ndarray]  # RGB uint8 [H, W, 3]
    masks: list[list[np.ndarray]]  # masks[t][o]: 0/1 uint8 [H, W]


def background(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured texture (upsampled noise): no flat areas, so crops are not trivial."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 215, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-12, 13, (h, w, 3))
    return np.clip(smooth.astype(np.int16) + fine, 0, 255).astype(np.uint8)


def make_clip(num_frames: int, num_objects: int, h: int = 480, w: int = 640, seed: int = 0,
              sensor_noise: float = 0.0) -> Clip:
    """Ellipses of radius 20..60 px (at most 70 % of their cell), each bouncing at 1..4 px per
    frame inside its own cell of a near-square grid, so objects never occlude each other: every
    mask is a whole object of a typical size. (A sliver left by an occlusion is a worst case of
    its own: SAOT enlarges a tiny mask up to the 8192-patch cap, one ViT call of ~1 s at 2B.)"""
    rng = np.random.default_rng(seed)
    bg = background(h, w, seed)
    cols = int(np.ceil(np.sqrt(num_objects * w / h)))
    rows = int(np.ceil(num_objects / cols))
    ch, cw = h / rows, w / cols
    cells = [(int(i // cols) * ch, int(i % cols) * cw) for i in range(num_objects)]
    r_max = max(4, min(60, int(0.35 * min(ch, cw))))
    radii = rng.integers(min(20, r_max), r_max + 1, (num_objects, 2))  # (ry, rx)
    colours = rng.integers(0, 256, (num_objects, 3))
    lo = np.array([(y0 + ry, x0 + rx) for (y0, x0), (ry, rx) in zip(cells, radii, strict=True)])
    hi = np.array([(y0 + ch - ry - 1, x0 + cw - rx - 1)
                   for (y0, x0), (ry, rx) in zip(cells, radii, strict=True)])
    hi = np.maximum(hi, lo)
    pos = rng.uniform(lo, hi)
    vel = rng.uniform(1, 4, (num_objects, 2)) * rng.choice([-1, 1], (num_objects, 2))
    frames, masks = [], []
    for _ in range(num_frames):
        img = bg.copy()
        frame_masks = []
        for o in range(num_objects):
            m = np.zeros((h, w), np.uint8)
            cy, cx = (int(v) for v in pos[o])
            cv2.ellipse(m, (cx, cy), (int(radii[o, 1]), int(radii[o, 0])), 0, 0, 360, 1, -1)
            img[m > 0] = colours[o]
            frame_masks.append(m)
        if sensor_noise > 0:
            noise = rng.normal(0, sensor_noise, img.shape)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
        frames.append(img)
        masks.append(frame_masks)
        pos += vel
        bounce = (pos < lo) | (pos > hi)
        vel[bounce] *= -1
        pos = np.clip(pos, lo, hi)
    return Clip(frames, masks)
