#!/usr/bin/env python3
"""Write a PNG contact sheet of synthetic scenes: one row per scene, mask outlines drawn in.

Usage: python scripts/show_world.py OUT.png [--scenes 4] [--seed 0]
Each row is labelled with the scene seed; each object's outline carries its id, and the
descriptions are printed to stdout.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pixelrefer_ros.synthetic import describe, generate_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seed, args.seed + args.scenes):
        scene = generate_scene(seed)
        print(f"seed {seed}: " + "; ".join(f"{o.id}: {describe(o)}" for o in scene.objects))
        tiles = []
        for t in range(scene.num_frames):
            tile = np.ascontiguousarray(scene.frames[t, :, :, ::-1])  # BGR for OpenCV
            for o in scene.objects:
                contours, _ = cv2.findContours(scene.masks[t, o.id], cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(tile, contours, -1, (0, 0, 0), 1)
                x0, y0 = o.bboxes[t][:2]
                cv2.putText(tile, str(o.id), (int(x0), int(y0) + 10), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(tile, f"s{seed} t{t}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(cv2.copyMakeBorder(tile, 2, 2, 2, 2, cv2.BORDER_CONSTANT))
        rows.append(np.hstack(tiles))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
