"""The seam between the model worker and an inference backend (ROS-free).

The worker only needs the three incremental stages of `RegionPipeline` (model/pipeline.py).
The pipeline runs them on a stage backend (runtime/stages.py: torch, or the onnxruntime /
TensorRT engines made by pixelrefer-export), picked here from the explicit `backend` parameter,
never from a file name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class RegionModel(Protocol):
    """What the worker calls. Not thread-safe: the worker is its only caller.

    - `global_features(image)`: RGB uint8 [H, W, 3] -> per-frame features [Pg, C] (cacheable).
    - `object_tokens(image, mask, global_feats)`: mask uint8 0/1 [H, W] -> tokens [K, H_llm].
    - `answer(question, object_tokens, timestamps_per_object, max_new_tokens, deadline)`:
      one [F_o*K, H_llm] block per object, `timestamps_per_object` None for a single frame or
      one list of seconds per object (video); `deadline` is a time.monotonic() value. Returns an
      object with text, token_ids, prompt_tokens, stopped ("eos" | "max_new_tokens" |
      "deadline"), prefill_s and decode_s (model.pipeline.Answer).
    """

    def global_features(self, image: np.ndarray) -> Any: ...

    def object_tokens(self, image: np.ndarray, mask: np.ndarray, global_feats: Any) -> Any: ...

    def answer(self, question: str, object_tokens: Sequence[Any],
               timestamps_per_object: Sequence[Sequence[float]] | None = None,
               max_new_tokens: int = 64, deadline: float | None = None) -> Any: ...


@dataclass(frozen=True)
class Backend:
    """A loaded model plus what the node reports about it."""

    name: str  # one of BACKENDS
    model: RegionModel
    model_id: str
    checkpoint_dir: Path
    device: str
    precision: str
    load_s: float


def load_backend(name: str, model_dir: str | Path, device: str = "cpu", precision: str = "fp32",
                 engine_dir: str | Path = "", force_engine_update: bool = False,
                 cuda_graph_tokens: int = 0) -> Backend:
    """Load `model_dir` for backend `name`. Raises ValueError (unknown or not yet implemented
    backend) or model.loader.CheckpointError (missing/mismatched files) with a clear message.

    engine_dir ("" = <model_dir>/engines) and force_engine_update are for the engine backends;
    cuda_graph_tokens is the torch backend's shared KV cache length on CUDA (decode replayed as a
    CUDA graph for requests that fit; runtime/decode_graph.py).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    from pixelrefer_ros.model.loader import load_checkpoint
    from pixelrefer_ros.model.pipeline import RegionPipeline
    from pixelrefer_ros.runtime.stages import make_backend

    start = time.perf_counter()
    if name == "torch":
        loaded = load_checkpoint(model_dir, precision, device)
    else:  # engine backends carry their own weights: read config, tokenizer and hash only
        loaded = load_checkpoint(model_dir, weights=False)
    # The shared cache only pays on CUDA (graph decode); on the CPU its extra masked slots
    # would cost attention work in every step.
    stages = make_backend(name, loaded, engine_dir or Path(model_dir) / "engines", device,
                          precision, force_engine_update=force_engine_update,
                          static_cache_tokens=cuda_graph_tokens if device.startswith("cuda")
                          else 0)
    return Backend(name=name, model=RegionPipeline(loaded, stages),
                   model_id=loaded.config.model_id, checkpoint_dir=Path(model_dir),
                   device=device, precision=precision, load_s=time.perf_counter() - start)
