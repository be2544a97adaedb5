"""A MagNet forward replayed as one CUDA graph.

A forward at 480 px launches about 1,500 small kernels, so on a fast GPU it is bound by the CPU
launching them, not by the GPU running them. Capturing the forward once per input shape and
replaying it launches all of them from the GPU in one call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .modeling import MagNet
from .modeling.magnet import MagNetOutput

WARMUP_FORWARDS = 2  # before capture: cuBLAS/cuDNN pick their kernels and workspaces


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    output: MagNetOutput


class GraphedForward:
    """Calls `model(images, input_ids, attention_mask)` (inference only) by replaying a CUDA graph
    captured the first time each input shape is seen; `amp` is the autocast dtype, or None for the
    model's own. The output's tensors are the graphs' memory: read or clone them before the next
    call. At most `max_graphs` shapes are kept (the oldest is dropped)."""

    def __init__(self, model: MagNet, amp: torch.dtype | None = None, max_graphs: int = 8) -> None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {device}")
        self.model = model.eval()
        self.amp = amp
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle()  # one memory pool: replays never overlap

    def __call__(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> MagNetOutput:
        inputs = (images, input_ids, attention_mask)
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        with torch.inference_mode():
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(inputs)
                if len(self._graphs) >= self.max_graphs:
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[key] = captured
            for static, new in zip(captured.inputs, inputs):
                static.copy_(new)
            captured.graph.replay()
        return captured.output

    @property
    def captured_shapes(self) -> int:
        return len(self._graphs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        # Autocast's weight cache would hold casts made during capture outside the graph's pool.
        return torch.autocast("cuda", dtype=self.amp, cache_enabled=False)

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        static = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._autocast():
            for _ in range(WARMUP_FORWARDS):
                self.model(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), self._autocast():
            output = self.model(*static)
        return _Captured(graph, static, output)
