"""Torch on CUDA: the per-step stages replayed as CUDA graphs over static buffers.

A control step launches hundreds of small kernels (the DiT runs K times); on a GPU their
launch cost rivals their work. Captured once, a CUDA graph replays them all with one launch.
What a replay reads and writes must sit at fixed addresses, so :class:`GraphRunner` keeps,
per input signature, static input buffers that every call copies into, and the outputs the
capture allocated, which every call clones (the next replay overwrites them). Signatures are
stable per task: the vision tower per camera count, the backbone step per camera count and
prefix length, the K-step sampler per context length, K, guidance weight and whether RTC
guidance is on. A new signature captures a new graph; the least recently used beyond
``max_graphs`` are dropped.

The whole K-step loop is one graph, the cross-attention K/V included. Guided (RTC) steps
cannot run autograd inside a capture, so they use the guided step traced ahead of time into
a forward graph (``export.trace_guided``, the same trace the ONNX export uses).

The capture itself is a parameter: :func:`cuda_graph_capture` on a GPU, :func:`eager_capture`
(the same static-buffer protocol with the function re-run on every replay) to test the
runner and these stages on machines without CUDA.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from qwen_vla_ros.model.sampler import Guidance, euler_sample, trace_guided
from qwen_vla_ros.model.stages import TorchStages
from qwen_vla_ros.model.timing import NullTimer

if TYPE_CHECKING:
    from qwen_vla_ros.model.policy import Policy

LOG = logging.getLogger(__name__)
WARMUP_RUNS = 3  # on a side stream before capture: lazy initialisation (cuBLAS handles, workspaces)

Function = Callable[..., Sequence[torch.Tensor] | torch.Tensor]
# (function, static inputs) -> (replay, static outputs): after replay() the outputs hold fn(static inputs)
Tensors = tuple[torch.Tensor, ...]
Capture = Callable[[Function, Tensors], tuple[Callable[[], None], Tensors]]


def _as_tuple(outputs: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def eager_capture(function: Function, inputs: Tensors) -> tuple[Callable[[], None], Tensors]:
    """The static-buffer protocol without CUDA: replay re-runs ``function`` on the static
    inputs and writes the results into the static outputs, as a graph replay would."""
    outputs = _as_tuple(function(*inputs))

    def replay() -> None:
        for static, fresh in zip(outputs, _as_tuple(function(*inputs)), strict=True):
            static.copy_(fresh)

    return replay, outputs


def cuda_graph_capture(pool: Any = None) -> Capture:
    """Capture with ``torch.cuda.CUDAGraph``, all graphs sharing one memory pool."""

    def capture(function: Function, inputs: Tensors) -> tuple[Callable[[], None], Tensors]:
        side = torch.cuda.Stream(inputs[0].device)
        side.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                function(*inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = _as_tuple(function(*inputs))
        return graph.replay, outputs

    return capture


@dataclass
class _Captured:
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    replay: Callable[[], None]


class GraphRunner:
    """Calls a function through captured graphs: one per input signature (+ ``extra`` key)."""

    def __init__(self, name: str, capture: Capture, max_graphs: int = 8) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.name = name
        self.capture = capture
        self.max_graphs = max_graphs
        self.captures = 0
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._lock = threading.Lock()  # static buffers admit one call at a time

    @staticmethod
    def signature(inputs: Sequence[torch.Tensor], extra: tuple = ()) -> tuple:
        return (tuple((tuple(t.shape), t.dtype, t.device) for t in inputs), extra)

    def __call__(self, make_function: Callable[[], Function], inputs: Sequence[torch.Tensor],
                 extra: tuple = ()) -> tuple[torch.Tensor, ...]:
        """``make_function`` builds the function for a new signature (it may trace with ``inputs``)."""
        with self._lock:
            return self._run(make_function, inputs, extra)

    def _run(self, make_function: Callable[[], Function], inputs: Sequence[torch.Tensor],
             extra: tuple) -> tuple[torch.Tensor, ...]:
        key = self.signature(inputs, extra)
        captured = self._graphs.get(key)
        if captured is None:
            static = tuple(t.detach().clone() for t in inputs)
            replay, outputs = self.capture(make_function(), static)
            captured = _Captured(static, outputs, replay)
            self._graphs[key] = captured
            self.captures += 1
            LOG.info("%s: captured graph %d for shapes %s", self.name, self.captures, [tuple(t.shape) for t in inputs])
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        for static, fresh in zip(captured.inputs, inputs, strict=True):
            static.copy_(fresh)
        captured.replay()
        return tuple(output.clone() for output in captured.outputs)

    def __len__(self) -> int:
        return len(self._graphs)


class CudaGraphStages(TorchStages):
    """Vision, backbone step and the whole K-step sampler as replayed graphs of the torch modules."""

    def __init__(self, policy: Policy, capture: Capture | None = None, max_graphs: int = 8) -> None:
        if capture is None:
            if policy.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a cuda device, got {policy.device}")
            capture = cuda_graph_capture(torch.cuda.graph_pool_handle())
        super().__init__(policy.vision, policy.step_backbone, policy.head)
        self.name = "torch + CUDA graphs" if policy.device.type == "cuda" else "torch + static graphs (eager replay)"
        self.runners = {name: GraphRunner(name, capture, max_graphs) for name in ("vision", "step_backbone", "sample")}

    def vision(self, pixel_patches: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
        return self.runners["vision"](lambda: self.vision_module, (pixel_patches, positions, cos, sin))[0]

    def step_backbone(self, image_tokens: torch.Tensor, template: torch.Tensor, image_index: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, *prefix_state: torch.Tensor) -> torch.Tensor:
        inputs = (image_tokens, template, image_index, cos, sin, *prefix_state)
        return self.runners["step_backbone"](lambda: self.step_module, inputs)[0]

    def sample(
        self,
        features: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor,
        steps: int,
        guidance: Guidance | None = None,
        timer: NullTimer | None = None,
    ) -> torch.Tensor:
        timer = timer or NullTimer()
        inputs: tuple[torch.Tensor, ...] = (features, state, noise, mask)
        if guidance is not None:
            inputs += (guidance.target, guidance.weights)
        extra = (steps, None if guidance is None else (guidance.max_weight, guidance.cap_at_steps))
        with timer.stage("sample_graph"):
            return self.runners["sample"](lambda: self._sampler(inputs, steps, guidance), inputs, extra)[0]

    def _sampler(self, inputs: tuple[torch.Tensor, ...], steps: int, guidance: Guidance | None) -> Function:
        """The K-step loop over static tensors; guided steps through a traced forward graph."""
        head = self.head
        guided_step = None
        if guidance is not None:
            features, state, noise, mask, target, weights = inputs
            kv = head.context_kv(features)
            guided_step = trace_guided(head, (noise, torch.zeros(1, device=noise.device), state, mask, target,
                                              weights, *kv), symbolic=False)
        max_weight = None if guidance is None else guidance.max_weight
        cap_at_steps = guidance is None or guidance.cap_at_steps

        def run(features: torch.Tensor, state: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                *rtc: torch.Tensor) -> torch.Tensor:
            kv = head.context_kv(features)

            def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return head(x, t, state, *kv)

            if guided_step is None:
                return euler_sample(velocity, noise, mask, steps)
            target, weights = rtc
            assert max_weight is not None  # traced only with guidance

            def pull(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return guided_step(x, t, state, mask, target, weights, *kv)

            return euler_sample(velocity, noise, mask, steps, Guidance(target, weights, max_weight, cap_at_steps),
                                pull=pull)

        return run
