"""What one region costs to encode, by its size: the official zoom makes tiny regions expensive.

    python -m bench.bench_region_cost [--model-dir CKPT] [--attention flash|math] [--repeats 3]

For a 640x480 frame and three masks (a 24x24 px box, a 1-pixel speck, a 1-pixel-wide diagonal
line), each in a fresh process: the ViT patches of its zoomed crop (`crop_patches`), the time
of `object_tokens` (crop + local encode, SAOT, OCI, MLP; median of `repeats` after one warm-up
on the box) and the growth of peak RSS over that encode. `--attention math` gives the ViT's
attention 3-D inputs, as the node did before 2026-11-26, which makes PyTorch's CPU path take
its math kernel (it holds every [heads, patches, patches] score); the default is the node's
own path. `max_region_patches` (node parameter) refuses regions by the first column.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import REPO, load_avg, result_path, save_json, table
from bench.models import resolve_model_dir

MASKS = ("box24", "speck", "line")

# One mask in a fresh process (so that the peak RSS is this encode's own). Prints a JSON line.
PROBE = """
import json, resource, statistics, sys, time
import numpy as np, torch
import torch.nn.functional as F
model_dir, kind, attention, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if attention == "math":  # the node's ViT before 2026-11-26: 3-D inputs, math kernel
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: (
        sdpa(q[0], k[0], v[0], *a, **kw)[None] if q.dim() == 4 and q.shape[0] == 1
        else sdpa(q, k, v, *a, **kw))
from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.model.preprocess import crop_patches
torch.set_num_threads(1)
pipe = RegionPipeline(load_checkpoint(model_dir, "float32"))
image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
box = np.zeros((480, 640), np.uint8)
box[100:124, 100:124] = 1
mask = np.zeros((480, 640), np.uint8)
if kind == "box24":
    mask = box
elif kind == "speck":
    mask[240, 320] = 1
else:
    mask[np.arange(480), np.arange(480)] = 1
feats = pipe.global_features(image)
pipe.object_tokens(image, box, feats)  # warm-up on an ordinary object
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    pipe.object_tokens(image, mask, feats)
    times.append(time.perf_counter() - t0)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"mask": kind, "pixels": int(mask.sum()),
                  "patches": crop_patches(mask, pipe.config.preprocess),
                  "encode_s": statistics.median(times), "peak_rss_growth_mib": grown}))
"""


def measure(model_dir: str, kind: str, attention: str, repeats: int) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, model_dir, kind, attention, str(repeats)],
                         cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"probe for {kind} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=None)
    p.add_argument("--attention", default="flash", choices=["flash", "math"])
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model_dir, what = resolve_model_dir(args.model_dir, quick=False)
    load_before = load_avg()
    results = [measure(str(model_dir), kind, args.attention, args.repeats)
               for kind in args.masks]
    rows = [[r["mask"], r["pixels"], r["patches"], f"{r['encode_s']:.3f}",
             f"{r['peak_rss_growth_mib']:.0f}"] for r in results]
    print(f"{what}, 640x480 frame, attention {args.attention}, 1 thread, median of "
          f"{args.repeats}, load {load_before:.1f} -> {load_avg():.1f}")
    print(table(["mask", "pixels", "crop patches", "object_tokens s", "peak RSS growth MiB"],
                rows))
    save_json(args.json or result_path(f"region_cost_{args.attention}"),
              {"bench": "region_cost", "model": what, "attention": args.attention,
               "repeats": args.repeats, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
