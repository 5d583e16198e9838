"""CUDA-graph stages. The static-buffer runner and the stages built on it run here with
``eager_capture`` (the same protocol, the function re-run at each replay) because this
machine has no GPU; the real ``torch.cuda.CUDAGraph`` capture is tested where CUDA exists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from qwen_vla_ros.config import load_embodiment  # noqa: E402
from qwen_vla_ros.model import load_policy  # noqa: E402
from qwen_vla_ros.model.cuda_graphs import CudaGraphStages, GraphRunner, eager_capture  # noqa: E402
from qwen_vla_ros.model.loading import BackendOptions  # noqa: E402
from qwen_vla_ros.model.normalization import ChannelNormalizer  # noqa: E402
from qwen_vla_ros.model.stages import TorchStages  # noqa: E402

INSTRUCTION = "pick up the cube and hand it to the other arm"
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available on this machine, so CUDA graphs cannot be captured"
)


def affine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x * 2 + y, x.sum(dim=-1)


def test_the_runner_replays_on_fresh_inputs_and_returns_independent_outputs() -> None:
    runner = GraphRunner("affine", eager_capture)
    first_inputs = (torch.ones(2, 3), torch.zeros(2, 3))
    first = runner(lambda: affine, first_inputs)
    second = runner(lambda: affine, (torch.full((2, 3), 5.0), torch.ones(2, 3)))
    assert runner.captures == 1 and len(runner) == 1
    torch.testing.assert_close(second[0], torch.full((2, 3), 11.0))
    torch.testing.assert_close(second[1], torch.full((2,), 15.0))
    torch.testing.assert_close(first[0], torch.full((2, 3), 2.0)), "a replay must not overwrite earlier results"
    first_inputs[0].fill_(100.0)
    torch.testing.assert_close(runner(lambda: affine, (torch.ones(2, 3), torch.zeros(2, 3)))[0], first[0])


def test_a_new_signature_captures_again_and_old_graphs_are_dropped() -> None:
    runner = GraphRunner("affine", eager_capture, max_graphs=2)
    made = []

    def make():
        made.append(1)
        return affine

    for rows in (1, 2, 1, 3, 1):
        out = runner(make, (torch.ones(rows, 4), torch.ones(rows, 4)))
        assert out[0].shape == (rows, 4)
    assert runner.captures == 3 and len(made) == 3 and len(runner) == 2, "rows 1 stays, 2 is dropped for 3"
    runner(make, (torch.ones(1, 4), torch.ones(1, 4)), extra=("other K",))
    assert runner.captures == 4, "the extra key is part of the signature"
    with pytest.raises(ValueError):
        GraphRunner("none", eager_capture, max_graphs=0)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path):
    return load_policy(tiny_checkpoint)


def run(policy, stages, embodiment, images, state, **kwargs) -> np.ndarray:
    previous, policy.stages = policy.stages, stages
    try:
        policy.set_task(embodiment, INSTRUCTION)
        return policy.infer(images, state, **kwargs).actions
    finally:
        policy.stages = previous


@pytest.mark.parametrize("embodiment", ["aloha", "widowx"])
def test_graph_stages_reproduce_eager_torch(policy, make_images, embodiment: str) -> None:
    """Same actions, unguided and with real-time chunking (the traced guided step)."""
    eager = TorchStages(policy.vision, policy.step_backbone, policy.head)
    graphs = CudaGraphStages(policy, capture=eager_capture)
    config = load_embodiment(embodiment)
    state = ChannelNormalizer.from_stats(config.normalization.state).offset
    images = make_images([c.name for c in config.cameras], seed=2)
    expected = run(policy, eager, embodiment, images, state, seed=4)
    np.testing.assert_allclose(run(policy, graphs, embodiment, images, state, seed=4), expected, atol=1e-5)
    committed = expected[1:] + 0.02  # the chunk-length minus one actions still to execute
    guided = {"committed": committed, "delay_steps": min(3, len(committed)), "seed": 6}
    expected_guided = run(policy, eager, embodiment, images, state, **guided)
    got_guided = run(policy, graphs, embodiment, images, state, **guided)
    np.testing.assert_allclose(got_guided, expected_guided, atol=1e-5)
    assert np.abs(got_guided - run(policy, graphs, embodiment, images, state, seed=6)).max() > 1e-3
    captures = {name: runner.captures for name, runner in graphs.runners.items()}
    assert captures == {"vision": 1, "step_backbone": 1, "sample": 2}, "one graph per signature, guided apart"
    other_images = make_images([c.name for c in config.cameras], seed=3)
    np.testing.assert_allclose(run(policy, graphs, embodiment, other_images, state - 0.1, seed=1),
                               run(policy, eager, embodiment, other_images, state - 0.1, seed=1), atol=1e-5)
    assert {name: runner.captures for name, runner in graphs.runners.items()} == captures, "replayed, not recaptured"


def test_cpu_policies_keep_eager_stages(policy) -> None:
    assert type(policy.stages) is TorchStages
    with pytest.raises(ValueError, match="cuda"):
        CudaGraphStages(policy)


@needs_cuda
def test_cuda_graphs_match_eager_on_the_gpu(tiny_checkpoint: Path, make_images) -> None:
    graphed = load_policy(tiny_checkpoint, device="cuda", dtype="float32")
    assert isinstance(graphed.stages, CudaGraphStages) and graphed.stages.name == "torch + CUDA graphs"
    eager = load_policy(tiny_checkpoint, device="cuda", dtype="float32", options=BackendOptions(cuda_graphs=False))
    assert type(eager.stages) is TorchStages
    config = load_embodiment("aloha")
    state = ChannelNormalizer.from_stats(config.normalization.state).offset
    for seed in (0, 1):
        images = make_images([c.name for c in config.cameras], seed=seed)
        for policy in (graphed, eager):
            policy.set_task("aloha", INSTRUCTION)
        expected = eager.infer(images, state, seed=seed).actions
        got = graphed.infer(images, state, seed=seed).actions
        norm = eager.task.action_normalizer.normalize
        assert np.abs(norm(got) - norm(expected)).max() <= 1e-3
        committed = expected[5:25]
        expected = eager.infer(images, state, committed=committed, delay_steps=3, seed=seed).actions
        got = graphed.infer(images, state, committed=committed, delay_steps=3, seed=seed).actions
        assert np.abs(norm(got) - norm(expected)).max() <= 1e-3
