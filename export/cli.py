"""pixelrefer-export: checkpoint directory -> engine directory (ONNX graphs, manifest, engines).

    pixelrefer-export CKPT_DIR --out ENGINE_DIR [--precision fp32|fp16|bf16] [--tensorrt]
                      [--verify] [--force-engine-update]

The ONNX graphs are always fp32: they are what onnxruntime runs and what --verify checks.
--precision selects the TensorRT builder precision (FP16/BF16 matmuls from the same ONNX).
Exit codes: 0 ok, 1 verification failed, 2 usage or environment error (e.g. no TensorRT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pixelrefer-export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (official HF layout)")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="TensorRT engine precision (the ONNX graphs stay fp32)")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build TensorRT engines (needs TensorRT 10 and a CUDA GPU)")
    p.add_argument("--force-engine-update", action="store_true",
                   help="rebuild TensorRT engines even if engines with this tag exist")
    p.add_argument("--verify", action="store_true",
                   help="compare every graph and the pipeline's greedy text with PyTorch")
    p.add_argument("--verify-cases", type=Path, default=None,
                   help="also verify on the official fixture cases in this directory")
    p.add_argument("--synthetic-scenes", type=int, default=3,
                   help="shapes-world image scenes to verify on (plus one video scene)")
    p.add_argument("--skip-onnx", action="store_true",
                   help="reuse the ONNX graphs already in --out (checkpoint hash must match)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--max-seq-len", type=int, default=4096,
                   help="prompt + generated tokens per request (KV length, profile max)")
    p.add_argument("--max-cells", type=int, default=16384,
                   help="mask-grid cells of one object (objects graph profile max)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens per verify scene")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.precision != "fp32" and not args.tensorrt:
        print("error: --precision applies to TensorRT engines (the ONNX graphs are fp32); "
              "add --tensorrt", file=sys.stderr)
        return 2
    from export.manifest import build_manifest, update_manifest, write_manifest
    from export.onnx_export import ExportLimits, axis_ranges, export_all
    from pixelrefer_ros.model.loader import load_checkpoint
    from pixelrefer_ros.runtime.ort_backend import EngineError, read_manifest

    loaded = load_checkpoint(args.checkpoint, "float32")
    out: Path = args.out
    limits = ExportLimits(max_seq_len=args.max_seq_len, max_cells=args.max_cells)
    t0 = time.perf_counter()
    if args.skip_onnx:
        try:
            read_manifest(out, loaded.checkpoint_hash)
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        graphs = export_all(loaded.model, out, limits, args.opset)
        ranges = axis_ranges(loaded.model, limits)
        write_manifest(out, build_manifest(loaded, graphs, ranges, args.opset,
                                           {"max_seq_len": limits.max_seq_len,
                                            "max_cells": limits.max_cells}))
        print(f"ONNX export: {time.perf_counter() - t0:.1f} s -> {out}")

    if args.tensorrt:
        try:
            from export.trt_build import build_engines

            build_engines(out, args.precision, force=args.force_engine_update)
        except (ImportError, RuntimeError) as exc:
            print(f"error: TensorRT engines not built: {exc}", file=sys.stderr)
            return 2

    if not args.verify:
        return 0
    from export.verify import format_report, synthetic_scenes, verify
    from pixelrefer_ros.runtime.ort_backend import OrtBackend

    scenes = synthetic_scenes(args.synthetic_scenes)
    if args.verify_cases is not None:
        scenes += fixture_scenes(args.verify_cases)
    t1 = time.perf_counter()
    backend = OrtBackend(out, loaded.checkpoint_hash)
    report = verify(loaded, backend, scenes, max_new_tokens=args.max_new_tokens)
    report["seconds"] = round(time.perf_counter() - t1, 1)
    update_manifest(out, verify={k: report[k] for k in ("backend", "random", "real", "passed")})
    (out / "verify.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_report(report))
    print(f"verify: {report['seconds']} s")
    return 0 if report["passed"] else 1


def fixture_scenes(cases_dir: Path) -> list:
    """The official fixture cases (see shared/fixtures/official_tiny/README.md) as scenes."""
    import cv2

    from export.verify import Scene

    def rgb(name: str):
        return cv2.cvtColor(cv2.imread(str(cases_dir / name)), cv2.COLOR_BGR2RGB)

    scenes = []
    for path in sorted(cases_dir.glob("*.json")):
        meta = json.loads(path.read_text())
        if "inputs_png" not in meta:
            continue
        pngs = meta["inputs_png"]
        files = [pngs["image"]] if meta["modal"] == "image" else pngs["frames"]
        masks = [cv2.imread(str(cases_dir / m), cv2.IMREAD_UNCHANGED) for m in pngs["masks"]]
        scenes.append(Scene(path.stem, [rgb(f) for f in files], masks, meta["mask_ids"],
                            meta["instruct"], meta["modal"], meta["timestamps"],
                            meta["mask_ids_raw"]))
    return scenes


if __name__ == "__main__":
    raise SystemExit(main())
