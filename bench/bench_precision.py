"""Precision drift: how far bf16 and fp16 move the official fixture's results away from fp32.

    python -m bench.bench_precision [--device cpu|cuda] [--dtypes float32 bfloat16 float16]

For every official case (shared/fixtures/official_tiny), in each dtype on one device:
- object tokens (the whole vision path from the case's PNGs) against the fixture's fp32
  `obj.mask_feats`, and the last prompt logits (from the fixture's `llm.inputs_embeds`) against
  `llm.last_logits`: max |diff| divided by the reference's max |value|;
- the greedy answer: how many of the 16 official greedy tokens come out before the first
  difference, next to the smallest top-1/top-2 logit margin of the official run.
The fixture model has random weights: its margins are tiny (see the table), so a flipped token
here says that the dtype moves logits by more than that margin, not that a trained model's
answers change. fp32 on the GPU is run with TF32 off (parity arithmetic).
"""

from __future__ import annotations

import argparse

import torch

from bench.common import result_path, save_json, table
from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.model.preprocess import prepare_regions
from tests.official_fixtures import CASE_NAMES, OFFICIAL_CKPT, case_inputs, load_case


def relative_diff(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.float()
    return ((value.float().cpu() - reference).abs().max() / reference.abs().max()).item()


def leading_agreement(ids: list[int], reference: list[int]) -> int:
    """Tokens equal to the reference before the first difference."""
    for i, (a, b) in enumerate(zip(ids, reference, strict=False)):
        if a != b:
            return i
    return min(len(ids), len(reference))


@torch.inference_mode()
def measure_case(pipe: RegionPipeline, case: str) -> dict:
    tensors, meta = load_case(case)
    images, masks = case_inputs(meta)
    regions = prepare_regions(images, masks, meta["mask_ids"], pipe.config.preprocess)
    tokens = pipe.region_crops_tokens(regions)

    backend = pipe.backend
    embeds = tensors["llm.inputs_embeds"].to(backend.device, backend.dtype)[None]
    logits, _ = backend.prefill(embeds, embeds.shape[1] + 1)
    backend.close()

    answer = pipe.describe(images, masks, meta["mask_ids"], meta["instruct"], meta["modal"],
                           meta["timestamps"], meta["mask_ids_raw"], max_new_tokens=16)
    reference = tensors["llm.greedy_ids"].tolist()
    top2 = tensors["llm.step_top2_logits"].float()
    return {"tokens_rel_diff": relative_diff(tokens, tensors["obj.mask_feats"]),
            "logits_rel_diff": relative_diff(logits[0], tensors["llm.last_logits"].flatten()),
            "greedy_agree": leading_agreement(answer.token_ids, reference),
            "greedy_len": len(reference),
            "min_margin": (top2[:, 0] - top2[:, 1]).min().item(),
            "text_equal": answer.text == meta["llm"]["mm_infer_output"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=None,
                   help="default: float32 bfloat16, plus float16 on a GPU")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dtypes = args.dtypes or (["float32", "bfloat16"]
                             + (["float16"] if args.device.startswith("cuda") else []))
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows, results = [], {}
    for dtype in dtypes:
        pipe = RegionPipeline(load_checkpoint(OFFICIAL_CKPT, dtype, device=args.device))
        for case in CASE_NAMES:
            r = measure_case(pipe, case)
            results[f"{dtype} {case}"] = r
            rows.append([dtype, case, f"{r['tokens_rel_diff']:.2e}", f"{r['logits_rel_diff']:.2e}",
                         f"{r['greedy_agree']}/{r['greedy_len']}", f"{r['min_margin']:.3f}",
                         "yes" if r["text_equal"] else "no"])
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"official_tiny fixture on {name} ({args.device}), torch {torch.__version__}")
    print(table(["dtype", "case", "tokens rel. diff", "last logits rel. diff",
                 "greedy tokens agreeing", "official min margin", "text equal"], rows))
    save_json(args.json or result_path(f"precision_{args.device.split(':')[0]}"),
              {"bench": "precision", "device": args.device, "device_name": name,
               "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
