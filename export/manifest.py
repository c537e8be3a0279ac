"""manifest.json of an engine directory: what was exported, from what, with which tools.

The runtime reads it (runtime/ort_backend.read_manifest) to refuse an engine directory made
from another checkpoint, and the TensorRT builder reads the axis ranges for its profiles.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from export.graphs import GRAPH_NAMES, graph_specs
from pixelrefer_ros.model.loader import LoadedModel
from pixelrefer_ros.runtime.ort_backend import (
    EMBEDDINGS_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    read_manifest,
)

TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "tensorrt")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the export/runtime tools (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(loaded: LoadedModel, graphs: dict[str, dict],
                   ranges: dict[str, tuple[int, int, int]], opset: int,
                   limits: dict[str, int]) -> dict[str, Any]:
    """The manifest for freshly exported graphs; `graphs` is onnx_export.export_all's result."""
    cfg = loaded.config
    specs = graph_specs(loaded.model)
    entries = {}
    for name in GRAPH_NAMES:
        spec = specs[name]
        entries[name] = {
            **graphs[name],
            "inputs": {k: {"shape": list(v), "dtype": spec.dtypes[k]}
                       for k, v in spec.inputs.items()},
            "outputs": {k: {"shape": list(v), "dtype": spec.dtypes[k]}
                        for k, v in spec.outputs.items()},
        }
    return {
        "format": MANIFEST_FORMAT,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": {"dir": str(loaded.checkpoint_dir.resolve()),
                       "hash": loaded.checkpoint_hash, "model_id": cfg.model_id,
                       "torch_dtype": cfg.torch_dtype},
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "onnx_precision": "fp32",
        "tools": tool_versions(),
        "model": {"vision_width": cfg.vision.hidden_size, "llm_width": cfg.llm.hidden_size,
                  "vocab_size": cfg.llm.vocab_size, "layers": cfg.llm.num_hidden_layers,
                  "kv_heads": cfg.llm.num_key_value_heads, "head_dim": cfg.llm.head_dim,
                  "tokens_per_object": cfg.objects.tokens_per_object,
                  "kmeans_iterations": cfg.objects.kmeans_iterations},
        "axes": {k: {"min": lo, "opt": opt, "max": hi} for k, (lo, opt, hi) in ranges.items()},
        "limits": limits,
        "embeddings": EMBEDDINGS_FILE,
        "graphs": entries,
        "engines": {},  # filled by export.trt_build
        "verify": None,  # filled by export.verify
    }


def write_manifest(engine_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(engine_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def update_manifest(engine_dir: Path, **fields: Any) -> dict[str, Any]:
    """Read, replace top-level `fields`, write back (engines, verify)."""
    manifest = read_manifest(engine_dir)
    manifest.update(fields)
    write_manifest(engine_dir, manifest)
    return manifest
