"""Build tagged TensorRT engines from an engine directory's ONNX graphs (TensorRT 10 API).

The engines are built from the very ONNX files onnxruntime runs and verify.py checks. Per graph:
parse the ONNX (external weights next to it), one optimisation profile covering every dynamic
axis with the manifest's (min, opt, max), FP16 or BF16 for the matrix products with every other
floating-point layer kept in fp32 (norms, softmax, RoPE angles: fp16 cannot even represent
positions above 2048 exactly), and a timing cache shared by the graphs and kept for rebuilds.

TensorRT 11 removed BuilderFlag.FP16/BF16 (strong typing only): there fp32 builds work, and
fp16/bf16 stop with a message. Not run here: TensorRT cannot be installed on these machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pixelrefer_ros.runtime.ort_backend import GRAPHS, read_manifest
from pixelrefer_ros.runtime.trt_backend import (
    engine_file,
    engine_tag,
    gpu_sm,
    import_tensorrt,
)


def profile_shapes(manifest: dict[str, Any], graph: str
                   ) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every input of `graph` from the manifest's symbolic shapes.

    "past+1" style output dims never appear on inputs; fixed dims are repeated three times.
    """
    axes = manifest["axes"]
    shapes = {}
    for name, entry in manifest["graphs"][graph]["inputs"].items():
        per_level = []
        for level in ("min", "opt", "max"):
            per_level.append(tuple(axes[d][level] if isinstance(d, str) else d
                                   for d in entry["shape"]))
        shapes[name] = tuple(per_level)
    return shapes


def _keep_fp32_outside_gemms(trt: Any, network: Any) -> None:
    """Pin every floating-point layer except matmul/conv to fp32 (weakly typed network)."""
    fast = {trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.CONVOLUTION}
    floats = {trt.float32, trt.float16, trt.bfloat16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in fast or layer.num_outputs == 0:
            continue
        if all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def build_engine(trt: Any, onnx_path: Path, engine_path: Path, precision: str,
                 shapes: dict[str, tuple[tuple[int, ...], ...]], cache_path: Path,
                 workspace_gib: float = 4.0) -> float:
    """One engine; returns build seconds. Updates the timing cache file in place."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    if major >= 11 and precision != "fp32":
        raise RuntimeError(f"TensorRT {trt.__version__} removed BuilderFlag.FP16/BF16; this "
                           "builder targets TensorRT 10 (use --precision fp32 here, or "
                           "TensorRT 10.x for fp16/bf16)")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major >= 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads the .onnx.data beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision in ("fp16", "bf16"):
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        _keep_fp32_outside_gemms(trt, network)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {engine_path.name} (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return time.perf_counter() - start


def build_engines(engine_dir: str | Path, precision: str = "fp16", force: bool = False,
                  device: str = "cuda:0", log=print) -> dict[str, Any]:
    """Engines for every graph, tagged for this TensorRT/GPU/precision; recorded in the
    manifest. Existing engines with the same tag are kept unless `force`."""
    from export.manifest import update_manifest

    trt = import_tensorrt()
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    sm = gpu_sm(device)
    tag = engine_tag(trt.__version__, sm, precision)
    engines = dict(manifest.get("engines", {}))
    if tag in engines and not force and all(
            (engine_dir / f).is_file() for f in engines[tag]["graphs"].values()):
        log(f"TensorRT engines {tag} exist; pass --force-engine-update to rebuild")
        return engines[tag]
    cache_path = engine_dir / f"timing.trt{trt.__version__}_sm{sm}.cache"
    record: dict[str, Any] = {"tensorrt": trt.__version__, "sm": sm, "precision": precision,
                              "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "timing_cache": cache_path.name, "graphs": {}, "build_s": {},
                              "profiles": {}}
    for graph in GRAPHS:
        shapes = profile_shapes(manifest, graph)
        path = engine_dir / engine_file(graph, tag)
        seconds = build_engine(trt, engine_dir / manifest["graphs"][graph]["file"], path,
                               precision, shapes, cache_path)
        record["graphs"][graph] = path.name
        record["build_s"][graph] = round(seconds, 1)
        record["profiles"][graph] = {k: [list(s) for s in v] for k, v in shapes.items()}
        log(f"built {path.name} in {seconds:.1f} s")
    engines[tag] = record
    update_manifest(engine_dir, engines=engines)
    return record
