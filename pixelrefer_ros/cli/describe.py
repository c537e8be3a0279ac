"""`pixelrefer-describe`: ask a checkpoint about masked regions of an image or a video.

Image:  pixelrefer-describe CKPT --image img.png --mask a.png [--mask b.png] [--question "..."]
Video:  pixelrefer-describe CKPT --frames f0.png f1.png --masks m0.png m1.png --timestamps 0 0.5
        (one object, a mask per frame; several objects: --video-object 0,1 --video-object 2,3)
Masks are single-channel PNGs; any non-zero pixel is the object. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np


def read_rgb(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str, hw: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SystemExit(f"cannot read mask {path}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != hw:
        raise SystemExit(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, "
                         f"image is {hw[1]}x{hw[0]}")
    return (mask > 0).astype(np.uint8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pixelrefer-describe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (official HF layout)")
    p.add_argument("--image", help="image file (image mode)")
    p.add_argument("--mask", action="append", default=[], help="mask per object (image mode)")
    p.add_argument("--frames", nargs="+", default=[], help="frame files (video mode)")
    p.add_argument("--masks", nargs="+", default=[],
                   help="video mode: one mask per (object, frame), object-major")
    p.add_argument("--timestamps", nargs="+", type=float, default=[], help="seconds per frame")
    p.add_argument("--video-object", action="append", default=[],
                   help="frame indices of one object, comma separated (default: all frames)")
    p.add_argument("--question", default=None, help="uses <region> once per object")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pixelrefer_ros.model.loader import load_checkpoint
    from pixelrefer_ros.model.pipeline import RegionPipeline

    t0 = time.perf_counter()
    pipeline = RegionPipeline(load_checkpoint(args.checkpoint, args.dtype, args.device))
    load_s = time.perf_counter() - t0
    if args.image:
        image = read_rgb(args.image)
        masks = [read_mask(m, image.shape[:2]) for m in args.mask]
        if not masks:
            raise SystemExit("image mode needs at least one --mask")
        answer = pipeline.describe([image], masks, [0] * len(masks), args.question, "image",
                                   max_new_tokens=args.max_new_tokens)
    elif args.frames:
        frames = [read_rgb(f) for f in args.frames]
        stamps = args.timestamps or [i / 3 for i in range(len(frames))]  # official folder fps: 3
        if len(stamps) != len(frames):
            raise SystemExit(f"{len(frames)} frames but {len(stamps)} timestamps")
        objects = ([[int(i) for i in o.split(",")] for o in args.video_object]
                   or [list(range(len(frames)))])
        mask_ids = [f for frames_of in objects for f in frames_of]
        if len(args.masks) != len(mask_ids):
            raise SystemExit(f"{len(mask_ids)} (object, frame) pairs but {len(args.masks)} masks")
        masks = [read_mask(m, frames[f].shape[:2]) for m, f in zip(args.masks, mask_ids,
                                                                   strict=True)]
        answer = pipeline.describe(frames, masks, mask_ids, args.question, "video", stamps,
                                   objects, max_new_tokens=args.max_new_tokens)
    else:
        raise SystemExit("give --image (image mode) or --frames (video mode)")
    json.dump({"text": answer.text, "prompt_tokens": answer.prompt_tokens,
               "tokens_generated": len(answer.token_ids), "stop_reason": answer.stopped,
               "timings_s": {"load": round(load_s, 4), "vision": round(answer.vision_s, 4),
                             "prefill": round(answer.prefill_s, 4),
                             "decode": round(answer.decode_s, 4)},
               "model_id": pipeline.config.model_id, "checkpoint": str(Path(args.checkpoint))},
              sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
