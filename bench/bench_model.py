"""Per-stage cost of PixelRefer-Lite with random weights of a released shape (default: 2B).

    python -m bench.bench_model --preset 2b --dtype float32 --json bench/results/model_2b.json

Stages, as the node runs them: the per-frame global encode (336² -> 576 patches), the
per-object tokenisation (crop + 224² local encode, SAOT pooling, OCI, MLP), LLM prefill of an
image prompt, and greedy decode tokens/s. `--preset tiny` is the smoke setting the tests run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import peak_rss_mb, save_json, time_it
from bench.models import TINY, random_model
from pixelrefer_ros.model.config import preset
from pixelrefer_ros.model.generate import generate
from pixelrefer_ros.model.preprocess import global_image, patchify, prepare_regions


def scene(h: int = 480, w: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 frame with one 120x90 object (a typical tracked object at VGA)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[200:320, 300:390] = 1
    return image, mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="2b", choices=["tiny", "2b", "7b"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TINY if args.preset == "tiny" else preset(args.preset)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = random_model(cfg, dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {n_params / 1e9:.3f} B params, {args.dtype}, built in {build_s:.1f} s")

    image, mask = scene()
    pcfg = cfg.preprocess
    region = prepare_regions([image], [mask], [0], pcfg)[0]

    def encode(img: np.ndarray) -> torch.Tensor:
        pv, grid = patchify(img, 1, pcfg)
        return model.encode(torch.from_numpy(pv), [grid])[0]

    results: dict[str, dict] = {}
    with torch.inference_mode():
        g_img = global_image(image, pcfg)
        t_global = time_it(lambda: encode(g_img), args.repeats)
        global_feats = encode(g_img).flatten(0, 1)

        def tokenize() -> torch.Tensor:
            crop, local = encode(region.crop), encode(region.local)
            q = model.objects.pool_object(crop, torch.from_numpy(region.mask_grid), region.box,
                                          region.orig_hw)
            return model.objects.project(model.objects.infuse(
                q[None], local.flatten(0, 1)[None], global_feats[None]))

        t_tok = time_it(tokenize, args.repeats)
        tokens = tokenize()
        prompt_len = 55  # DLC-style prompt: ~23 text tokens + 32 region tokens (spec §1.7)
        embeds = torch.randn(prompt_len, cfg.llm.hidden_size, dtype=dtype) * 0.02
        embeds[10:42] = tokens.to(dtype)

        def prefill() -> None:
            model.llm.setup_caches(1, prompt_len + 1, dtype=dtype)
            model.llm(embeds[None], torch.arange(prompt_len), last_only=True)

        t_prefill = time_it(prefill, args.repeats)
        res = generate(model.llm, embeds, args.new_tokens, eos_id=-1)  # never stops early
        decode_tps = (len(res.token_ids) - 1) / res.decode_s if res.decode_s else float("nan")

    crop_patches = region.crop.shape[0] // 14 * region.crop.shape[1] // 14
    results = {
        "global_encode": vars(t_global) | {"patches": 576},
        "object_tokenisation": vars(t_tok) | {"crop_patches": crop_patches, "local_patches": 256},
        "prefill": vars(t_prefill) | {"tokens": prompt_len},
        "decode": {"tokens_per_s": decode_tps, "new_tokens": len(res.token_ids)},
        "peak_rss_mb": peak_rss_mb(),
    }
    weight_bytes = n_params * torch.finfo(dtype).bits // 8
    print(f"global encode (576 patches)            {t_global}")
    print(f"object tokenisation ({crop_patches}+256 patches)  {t_tok}")
    print(f"prefill ({prompt_len} tokens)                   {t_prefill}")
    print(f"decode                                 {decode_tps:9.2f} tokens/s")
    print(f"weights {weight_bytes / 2**30:.2f} GiB, peak RSS {peak_rss_mb():.0f} MiB")
    print(f"ratio object tokenisation / global encode: "
          f"{t_tok.median_s / t_global.median_s:.2f}")
    save_json(args.json, {"preset": args.preset, "dtype": args.dtype, "params": n_params,
                          "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
