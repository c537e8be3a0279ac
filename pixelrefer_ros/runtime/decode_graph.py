"""One LLM decode step captured as a CUDA graph, replayed for every generated token.

Eager PyTorch launches ~15 kernels per layer from Python for a one-token step, so decoding is
bound by the host, not the GPU: on an H200 the 2B shape decoded 46 tokens/s eager, 3 % of what
its memory bandwidth allows, and the 7B shape about as fast (bench/bench_gpu.py). A graph replays
the whole step in one launch. It needs every tensor the step touches to stay at one address:
the static KV cache (model/llm.py), the input token and the position live in fixed buffers that
each step overwrites (gpt-fast's "reduce-overhead" mode, without torch.compile).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixelrefer_ros.model.llm import Qwen2


class DecodeGraph:
    """`step(token, pos)` = `llm(llm.embed(token), [pos], last_only=True)[:, -1]`, replayed.

    Valid only while `llm` keeps the KV caches it had when the graph was captured (the caller,
    runtime.stages.TorchBackend, reinstalls them before every request that uses the graph).
    """

    def __init__(self, llm: Qwen2, device: torch.device) -> None:
        self.llm = llm
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None

    def _run(self) -> Tensor:
        return self.llm(self.llm.embed(self.token), self.pos, last_only=True)[:, -1]

    def _capture(self) -> None:
        """Warm up on a side stream (as torch.cuda.graphs asks), then record one step. The
        warm-up steps compute the real step: they write the same k/v at the same position."""
        side = torch.cuda.Stream(self.token.device)
        side.wait_stream(torch.cuda.current_stream(self.token.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(self.token.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._run()
        self.graph = graph

    def step(self, token: Tensor, pos: int) -> Tensor:
        """token [1, 1] long at position `pos` -> logits [1, V] (a copy: the next replay
        overwrites the graph's own output)."""
        self.token.copy_(token.view(1, 1))
        self.pos.fill_(pos)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits.clone()
