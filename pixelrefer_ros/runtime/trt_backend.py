"""The TensorRT backend: tagged engines built from the engine directory's ONNX graphs.

Engines are not portable across TensorRT versions, GPU architectures or precisions, so every
engine file carries all three in its name (`vision.trt10.7.0_sm87_fp16.engine`) and in the
manifest. A directory without engines for this machine is refused with a message naming what is
there and what is needed; `force_engine_update` rebuilds them (export/trt_build.py) first.

Written to the documented TensorRT 10 Python API; `tensorrt` is imported only when this backend
is used. Not run on the project's machines (TensorRT cannot be installed there): see README.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelrefer_ros.runtime.ort_backend import (
    EMBEDDINGS_FILE,
    GRAPHS,
    EngineError,
    read_manifest,
)
from pixelrefer_ros.runtime.stages import (
    CropFeatures,
    KVState,
    StageBackend,
    object_graph_inputs,
    vision_graph_inputs,
)

PRECISIONS = ("fp32", "fp16", "bf16")
_TAG_RE = re.compile(r"^trt(?P<trt>[0-9.]+)_sm(?P<sm>\d+)_(?P<precision>fp32|fp16|bf16)$")


class EngineMismatchError(EngineError):
    """Engines exist but were built for another TensorRT version, GPU or precision."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError("the tensorrt backend needs the TensorRT Python package (10.x), which "
                          "is not installed; use backend:=onnxruntime or backend:=torch, or "
                          "install TensorRT from NVIDIA (JetPack ships it)") from exc
    return tensorrt


def engine_tag(trt_version: str, sm: str, precision: str) -> str:
    """`trt10.7.0_sm87_fp16`: the three things an engine is only valid for."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return f"trt{trt_version}_sm{sm}_{precision}"


def parse_tag(tag: str) -> dict[str, str]:
    match = _TAG_RE.match(tag)
    if match is None:
        raise ValueError(f"not an engine tag: {tag!r}")
    return match.groupdict()


def engine_file(graph: str, tag: str) -> str:
    return f"{graph}.{tag}.engine"


def gpu_sm(device: torch.device | str = "cuda") -> str:
    """Compute capability of `device` as TensorRT names it (8.7 -> "87")."""
    if not torch.cuda.is_available():
        raise RuntimeError("the tensorrt backend needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"{major}{minor}"


def find_engines(manifest: dict[str, Any], engine_dir: Path, tag: str) -> dict[str, Path]:
    """The engine file of every graph for `tag`, or an error that says how to get them."""
    rebuild = ("rebuild them on this machine: start the node with force_engine_update:=true, "
               f"or run `pixelrefer-export CKPT_DIR --out {engine_dir} --tensorrt --precision "
               f"{parse_tag(tag)['precision']} --force-engine-update`")
    built = manifest.get("engines") or {}
    if tag not in built:
        if not built:
            raise EngineError(f"{engine_dir} has no TensorRT engines; {rebuild}")
        have = ", ".join(_describe(t) for t in sorted(built))
        raise EngineMismatchError(
            f"{engine_dir} has TensorRT engines for [{have}] but this machine needs "
            f"[{_describe(tag)}]; engines are only valid for the TensorRT version, GPU "
            f"architecture and precision they were built with; {rebuild}")
    try:
        paths = {g: engine_dir / built[tag]["graphs"][g] for g in GRAPHS}
    except (KeyError, TypeError) as exc:
        raise EngineError(f"the manifest of {engine_dir} lists no {exc} engine for "
                          f"[{_describe(tag)}]; {rebuild}") from None
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise EngineError(f"engine file(s) {missing} listed in the manifest are missing; "
                          f"{rebuild}")
    return paths


def _describe(tag: str) -> str:
    t = parse_tag(tag)
    return f"TensorRT {t['trt']}, sm_{t['sm']}, {t['precision']}"


class _Engine:
    """One deserialized engine + execution context; runs on torch CUDA tensors."""

    def __init__(self, trt: Any, runtime: Any, path: Path, device: torch.device) -> None:
        self.trt, self.device = trt, device
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT could not deserialize {path} (built by another "
                                      "TensorRT version or for another GPU?); rebuild it with "
                                      "force_engine_update:=true")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def __call__(self, **feeds: Tensor) -> list[Tensor]:
        keep = []  # inputs must stay alive until the stream has run
        for name in self.inputs:
            dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            t = feeds[name].to(self.device, dtype).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            out = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for inputs "
                               f"{ {k: tuple(v.shape) for k, v in feeds.items()} }")
        return outs


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.bfloat16: torch.bfloat16}
    return table[dtype]


class TensorRTBackend(StageBackend):
    """The same stage calls as OrtBackend, on TensorRT engines; see StageBackend."""

    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, checkpoint_hash: str | None = None,
                 precision: str = "fp16", force_engine_update: bool = False,
                 device: str = "cuda:0", log=print) -> None:
        trt = import_tensorrt()
        self.engine_dir = Path(engine_dir)
        self.device, self.dtype = torch.device(device), torch.float32
        read_manifest(self.engine_dir, checkpoint_hash)
        tag = engine_tag(trt.__version__, gpu_sm(self.device), precision)
        if force_engine_update:
            from export.trt_build import build_engines  # the builder lives with the exporter

            build_engines(self.engine_dir, precision, force=True, device=device, log=log)
        self.manifest = read_manifest(self.engine_dir, checkpoint_hash)
        paths = find_engines(self.manifest, self.engine_dir, tag)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {g: _Engine(trt, runtime, p, self.device) for g, p in paths.items()}
        table = np.load(self.engine_dir / EMBEDDINGS_FILE, mmap_mode="r")
        self.embeddings = torch.from_numpy(np.ascontiguousarray(table)).to(self.device)
        self.axes = self.manifest["axes"]

    def _check(self, axis: str, value: int) -> None:
        lo, hi = self.axes[axis]["min"], self.axes[axis]["max"]
        if not lo <= value <= hi:
            raise ValueError(f"{axis} = {value} is outside the engines' profile [{lo}, {hi}] "
                             "(pixelrefer-export limits); re-export with larger limits")

    def encode(self, pixel_values: Tensor, grids: Sequence[tuple[int, int]]) -> Tensor:
        """Per image, like OrtBackend.encode (the dense mask of a packed call is quadratic)."""
        out = []
        sizes = [gh * gw for gh, gw in grids]
        for pv, grid in zip(pixel_values.split(sizes), grids, strict=True):
            self._check("patches", pv.shape[0])
            positions, segments = vision_graph_inputs([grid])
            out += self.engines["vision"](pixel_values=pv, positions=torch.from_numpy(positions),
                                          segments=torch.from_numpy(segments))
        return torch.cat(out)

    def object_tokens(self, crops: Sequence[CropFeatures], local: Tensor,
                      global_: Tensor) -> Tensor:
        out = []
        for i, crop in enumerate(crops):
            cells, positions, valid = object_graph_inputs(crop)
            self._check("cells", cells.shape[0])
            (tokens,) = self.engines["objects"](cells=cells, positions=positions, valid=valid,
                                                local=local[i], **{"global": global_[i]})
            out.append(tokens)
        return torch.cat(out)

    def embed(self, ids: Tensor) -> Tensor:
        return self.embeddings[ids.to(self.device)]

    def prefill(self, embeds: Tensor, max_seq_len: int) -> tuple[Tensor, KVState]:
        self._check("prompt", embeds.shape[1])
        self._check("past", max_seq_len - 1)
        logits, k, v = self.engines["prefill"](inputs_embeds=embeds)
        return logits, KVState(embeds.shape[1], k, v)

    def decode(self, token: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        logits, k, v = self.engines["decode"](token=token.reshape(1, 1), past_k=state.past_k,
                                              past_v=state.past_v)
        return logits, KVState(state.length + 1, k, v)

    def close(self) -> None:
        self.engines.clear()
