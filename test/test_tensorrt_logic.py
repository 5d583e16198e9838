"""TensorRT backend. The engine-building decisions (precision, optimisation profiles, cache keys,
reuse) are pure functions tested here; building and running engines needs TensorRT's libraries
and a GPU, which this machine lacks, so those tests skip saying so."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.engine_cache import (
    EngineKey,
    Precision,
    check_profile_limits,
    engine_dir,
    profile_shapes,
    resolve_precision,
    reuse_decision,
    shapes_fit,
    timing_cache_path,
    write_engine,
)
from qwen_vla_ros.model.onnx_manifest import ExportManifest, StageModel, TensorSpec, evaluate_dim, input_shapes

TENSORRT_MISSING = importlib.util.find_spec("tensorrt") is None


def stage(min_cameras: int = 1) -> StageModel:
    return StageModel(
        file="step_backbone.onnx",
        inputs=[
            TensorSpec(name="image_tokens", shape=["49*cameras", 512], dtype="float32"),
            TensorSpec(name="keys", shape=[1, 2, "prefix", 64], dtype="float32"),
            TensorSpec(name="features", shape=[1, "prefix+51*cameras", 512], dtype="float32"),
        ],
        outputs=[TensorSpec(name="out", shape=[1, "51*cameras", 512], dtype="float32")],
        min_cameras=min_cameras,
    )


def manifest(max_cameras: int = 8) -> ExportManifest:
    return ExportManifest(checkpoint="/ckpt", checkpoint_fingerprint="ab" * 32, opset=20, torch_version="2.13",
                          max_cameras=max_cameras, stages={"step_backbone": stage()})


def key(**changes: object) -> EngineKey:
    fields = dict(checkpoint_fingerprint="ab" * 32, export_digest="cd" * 32, gpu_name="NVIDIA H100 80GB HBM3",
                  compute_capability=(9, 0), tensorrt_version="10.13.0", precision="bf16", max_cameras=4,
                  max_prefix_tokens=512)
    fields.update(changes)
    return EngineKey(**fields)


# ------------------------------------------------------------------ shapes
def test_shape_entries_are_linear_in_cameras_and_prefix() -> None:
    assert evaluate_dim(7, 3, 100) == 7
    assert evaluate_dim("cameras", 3, 100) == 3
    assert evaluate_dim("49*cameras", 3, 100) == 147
    assert evaluate_dim("prefix+51*cameras", 2, 100) == 202
    assert input_shapes(stage(), 4, 150) == {"image_tokens": (196, 512), "keys": (1, 2, 150, 64),
                                             "features": (1, 354, 512)}
    with pytest.raises(ValueError, match="malformed"):
        evaluate_dim("2*cameras*prefix", 1, 1)


def test_profiles_span_one_camera_to_the_maximum_and_one_prefix_token_to_the_maximum() -> None:
    profile = profile_shapes(stage(), max_cameras=4, max_prefix_tokens=512)
    assert profile["image_tokens"] == ((49, 512), (196, 512), (196, 512))
    assert profile["keys"] == ((1, 2, 1, 64), (1, 2, 192, 64), (1, 2, 512, 64))
    assert profile["features"] == ((1, 52, 512), (1, 396, 512), (1, 716, 512))
    head = profile_shapes(stage(min_cameras=0), max_cameras=4, max_prefix_tokens=100)
    assert head["features"][0] == (1, 1, 512), "the head also serves camera-less embodiments"
    assert head["keys"][1] == (1, 2, 100, 64), "the optimum never exceeds the maximum"


def test_shapes_outside_the_profile_are_named() -> None:
    profile = profile_shapes(stage(), max_cameras=2, max_prefix_tokens=64)
    assert shapes_fit(profile, input_shapes(stage(), 2, 64)) == []
    outside = shapes_fit(profile, input_shapes(stage(), 3, 65))
    assert len(outside) == 3 and outside[0].startswith("image_tokens (147, 512)")


def test_profile_limits_must_fit_the_export() -> None:
    check_profile_limits(manifest(8), 8, 512)
    with pytest.raises(InvalidArgumentError, match="re-export with --max-cameras"):
        check_profile_limits(manifest(4), 5, 512)
    with pytest.raises(InvalidArgumentError, match="max_prefix_tokens"):
        check_profile_limits(manifest(4), 4, 0)


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize(
    ("requested", "capability", "fp8_nodes", "expected"),
    [
        ("bf16", (9, 0), False, "bf16"),
        ("bf16", (7, 5), False, "fp16"),  # Turing has no BF16
        ("fp16", (7, 5), False, "fp16"),
        ("fp32", (9, 0), False, "fp32"),
        ("fp8", (9, 0), True, "fp8"),
        ("fp8", (9, 0), False, "bf16"),  # no quantize/dequantize nodes to calibrate from
        ("fp8", (8, 6), True, "bf16"),  # Ampere has no FP8
        ("fp8", (7, 5), True, "fp16"),
    ],
)
def test_precision_falls_back_where_the_gpu_or_the_export_cannot(requested, capability, fp8_nodes, expected) -> None:
    precision = resolve_precision(requested, capability, fp8_nodes)
    assert precision.name == expected
    assert bool(precision.note) == (expected != requested)


def test_unknown_precision_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError, match="int4"):
        resolve_precision("int4", (9, 0), False)
    assert Precision("bf16").note == ""


# ------------------------------------------------------------------ cache keys and reuse
def test_every_dependency_changes_the_engine_folder() -> None:
    base = engine_dir(Path("/cache"), key())
    assert base.parent == Path("/cache") / ("ab" * 8)
    assert base.name.startswith("nvidia-h100-80gb-hbm3-sm90-trt10.13.0-bf16-")
    for change in (dict(checkpoint_fingerprint="ef" * 32), dict(export_digest="00" * 32), dict(gpu_name="H200"),
                   dict(compute_capability=(8, 9)), dict(tensorrt_version="10.14.1"), dict(precision="fp16"),
                   dict(max_cameras=3), dict(max_prefix_tokens=256)):
        assert engine_dir(Path("/cache"), key(**change)) != base, change


def test_the_timing_cache_is_shared_per_gpu_and_tensorrt_version() -> None:
    shared = timing_cache_path(Path("/cache"), key())
    assert timing_cache_path(Path("/cache"), key(checkpoint_fingerprint="ef" * 32, precision="fp16")) == shared
    assert timing_cache_path(Path("/cache"), key(tensorrt_version="10.14.1")) != shared
    assert timing_cache_path(Path("/cache"), key(gpu_name="NVIDIA H200")) != shared


def test_cached_engines_are_reused_only_for_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "engines" / "vision.engine"
    decision = reuse_decision(path, key(), "vision")
    assert not decision.reuse and "no cached vision engine" in decision.reason
    profile = profile_shapes(stage(), 4, 512)
    write_engine(path, b"plan bytes", key(), "vision", profile)
    assert path.read_bytes() == b"plan bytes" and not path.with_suffix(".partial").exists()
    assert reuse_decision(path, key(), "vision").reuse
    other = reuse_decision(path, key(tensorrt_version="10.14.1", precision="fp16"), "vision")
    assert not other.reuse and "precision, tensorrt_version" in other.reason
    assert not reuse_decision(path, key(), "dit_step").reuse
    recorded = json.loads(path.with_suffix(".json").read_text())
    assert recorded["profile"]["keys"] == [[1, 2, 1, 64], [1, 2, 192, 64], [1, 2, 512, 64]]
    path.with_suffix(".json").write_text("{broken")
    assert "no readable metadata" in reuse_decision(path, key(), "vision").reason
    path.write_bytes(b"")
    assert not reuse_decision(path, key(), "vision").reuse


# ------------------------------------------------------------------ FP8 detection (needs onnx)
def test_fp8_quantisation_is_detected_from_the_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install '.[onnx]'")
    from onnx import TensorProto, helper

    from qwen_vla_ros.model.tensorrt_backend import has_fp8_quantization

    def save(zero_point_type: int) -> Path:
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
        zero = helper.make_tensor("zero", zero_point_type, [], [0])
        node = helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])
        graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", zero_point_type, [2])], [scale, zero])
        path = tmp_path / f"q{zero_point_type}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
        return path

    assert has_fp8_quantization(save(TensorProto.FLOAT8E4M3FN))
    assert not has_fp8_quantization(save(TensorProto.INT8))


# ------------------------------------------------------------------ the real export and TensorRT itself
def test_profiles_from_the_tiny_export_admit_real_tasks(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    from qwen_vla_ros.model import load_policy
    from qwen_vla_ros.model.onnx_manifest import read_export_manifest

    exported = read_export_manifest(tiny_onnx)
    policy = load_policy(tiny_checkpoint)
    for embodiment, cameras in (("aloha", 4), ("widowx", 1)):
        policy.set_task(embodiment, "pick up the cube")
        prefix = len(policy.task.layout.prefix_ids)
        for name, model in exported.stages.items():
            profile = profile_shapes(model, max_cameras=4, max_prefix_tokens=512)
            assert shapes_fit(profile, input_shapes(model, cameras, prefix)) == [], (embodiment, name)
            if model.min_cameras:
                assert shapes_fit(profile, input_shapes(model, 5, prefix)), "5 cameras lie outside"


@pytest.mark.skipif(not TENSORRT_MISSING, reason="TensorRT is installed here, so its absence cannot be tested")
def test_without_tensorrt_the_error_says_what_to_install() -> None:
    from qwen_vla_ros.model.tensorrt_backend import TensorRTUnavailable, require_tensorrt

    with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
        require_tensorrt()


def test_tensorrt_needs_a_cuda_device(tiny_checkpoint: Path) -> None:
    from qwen_vla_ros.model import load_policy

    with pytest.raises(InvalidArgumentError, match="cuda device"):
        load_policy(tiny_checkpoint, backend="tensorrt", device="cpu")


@pytest.mark.skipif(TENSORRT_MISSING, reason="TensorRT (libnvinfer and its Python bindings) is not installed here")
def test_tensorrt_engines_match_torch_and_are_reused(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path,
                                                     make_images) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available, so TensorRT engines cannot be built")
    from qwen_vla_ros.config.runtime import TensorRTSettings
    from qwen_vla_ros.model import load_policy
    from qwen_vla_ros.model.loading import BackendOptions

    settings = TensorRTSettings(onnx_dir=str(tiny_onnx), engine_cache_dir=str(tmp_path), precision="fp32")
    engines = load_policy(tiny_checkpoint, backend="tensorrt", device="cuda", options=BackendOptions(tensorrt=settings))
    reference = load_policy(tiny_checkpoint, device="cuda", dtype="float32", options=BackendOptions(cuda_graphs=False))
    built = sorted(p.name for p in tmp_path.rglob("*.engine"))
    assert len(built) == 5 and len(list(tmp_path.glob("timing-*.cache"))) == 1
    for policy in (engines, reference):
        policy.set_task("aloha", "pick up the cube")
    images = make_images(list(engines.task.cameras))
    state = np.zeros(len(engines.task.entry.state_channels))
    norm = engines.task.action_normalizer.normalize
    expected, got = reference.infer(images, state, seed=1).actions, engines.infer(images, state, seed=1).actions
    assert np.abs(norm(got) - norm(expected)).max() <= 1e-3
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.engine")}
    load_policy(tiny_checkpoint, backend="tensorrt", device="cuda", options=BackendOptions(tensorrt=settings))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.engine")} == mtimes, "engines reused, not rebuilt"
