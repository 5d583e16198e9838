"""ONNX export and the onnxruntime backend on the tiny checkpoint: the manifest, dynamic camera
count and prefix length, per-stage and end-to-end parity with torch (same seed, same noise),
real-time chunking through the exported vector-Jacobian product, provider choice, the export
cache, and clear errors for stale exports, too many cameras and unsupported settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install '.[onnx]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install '.[onnx]'")

from qwen_vla_ros.cli import main as cli_main  # noqa: E402
from qwen_vla_ros.config import EMBODIMENTS, ConfigError, load_embodiment, load_runtime  # noqa: E402
from qwen_vla_ros.config.runtime import OnnxRuntimeSettings  # noqa: E402
from qwen_vla_ros.errors import InvalidArgumentError  # noqa: E402
from qwen_vla_ros.model import export as export_module  # noqa: E402
from qwen_vla_ros.model import load_policy  # noqa: E402
from qwen_vla_ros.model.denormals import flushed_denormals, flushing  # noqa: E402
from qwen_vla_ros.model.fingerprint import checkpoint_fingerprint  # noqa: E402
from qwen_vla_ros.model.images import check_images, patchify  # noqa: E402
from qwen_vla_ros.model.loading import BackendOptions, load_policy_from_config  # noqa: E402
from qwen_vla_ros.model.normalization import ChannelNormalizer  # noqa: E402
from qwen_vla_ros.model.onnx_manifest import STAGES, OnnxExportError, input_shapes, read_export_manifest  # noqa: E402
from qwen_vla_ros.model.ort_backend import (  # noqa: E402
    QUANTISED_SUFFIX,
    choose_providers,
    provider_options,
    session_options,
)
from qwen_vla_ros.model.sampler import GuidedVelocity  # noqa: E402

INSTRUCTION = "pick up the cube and hand it to the other arm"
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DENORMAL_BITS = 0x000A_E398  # exponent bits zero: about 1e-39, below float32's smallest normal 1.2e-38


def ort_options(folder: Path, **settings: object) -> BackendOptions:
    return BackendOptions(onnxruntime=OnnxRuntimeSettings(model_dir=str(folder), **settings))


@pytest.fixture(scope="module")
def torch_policy(tiny_checkpoint: Path):
    return load_policy(tiny_checkpoint)


@pytest.fixture(scope="module")
def ort_policy(tiny_checkpoint: Path, tiny_onnx: Path):
    return load_policy(tiny_checkpoint, backend="onnxruntime", options=ort_options(tiny_onnx))


def observation(policies, embodiment: str, make_images, seed: int = 0):
    for policy in policies:
        policy.set_task(embodiment, INSTRUCTION)
    config = load_embodiment(embodiment)
    state = ChannelNormalizer.from_stats(config.normalization.state).offset + 0.1
    return make_images(policies[0].task.cameras, seed=seed), state


def stage_inputs(policy, images) -> dict[str, tuple]:
    """Every stage's inputs for the policy's current task, computed by the torch modules."""
    task = policy.task
    pixels = torch.from_numpy(patchify(check_images(images, task.cameras), policy.patch_spec))
    vision = (pixels.view(len(task.cameras), -1, pixels.shape[-1]), *policy.vision_geometry)
    with torch.no_grad():
        tokens = policy.vision(*vision)
        step = (tokens, task.step_template, task.image_index, task.step_cos, task.step_sin, *task.prefix_state)
        features = torch.cat([task.prefix_features, policy.step_backbone(*step)], dim=1)
        kv = policy.head.context_kv(features)
    settings = policy.manifest.action_head
    generator = torch.Generator().manual_seed(1)
    actions = torch.randn(1, settings.chunk_length, settings.action_dim, generator=generator)
    t, state = torch.full((1,), 0.4), torch.randn(1, settings.state_dim, generator=generator)
    target = torch.randn(1, settings.chunk_length, settings.action_dim, generator=generator)
    weights = torch.rand(1, settings.chunk_length, 1, generator=generator)
    return {
        "vision": vision,
        "step_backbone": step,
        "context_kv": (features,),
        "dit_step": (actions, t, state, *kv),
        "dit_guided": (actions, t, state, task.action_mask, target, weights, *kv),
    }


def normalised(policy, actions: np.ndarray) -> np.ndarray:
    return policy.task.action_normalizer.normalize(actions.astype(np.float64))


# ------------------------------------------------------------------ export and manifest
def test_export_writes_every_stage_and_a_manifest(tiny_checkpoint: Path, tiny_onnx: Path, torch_policy) -> None:
    manifest = read_export_manifest(tiny_onnx)
    assert manifest.checkpoint_fingerprint == checkpoint_fingerprint(tiny_checkpoint)
    assert set(manifest.stages) == set(STAGES) and manifest.max_cameras == 8
    for name, stage in manifest.stages.items():
        model = onnx.load(str(tiny_onnx / stage.file))
        assert {o.version for o in model.opset_import if o.domain == ""} == {manifest.opset}, name
        assert [i.name for i in model.graph.input] == [spec.name for spec in stage.inputs], name
    vision = manifest.stage("vision").inputs[0]
    assert vision.name == "pixel_patches" and vision.shape[0] == "cameras"
    step = {spec.name: spec.shape for spec in manifest.stage("step_backbone").inputs}
    assert step["image_tokens"][0] == "4*cameras" and step["template"][1] == "6*cameras"
    attention_layers = torch_policy.step_backbone.trunk.layer_types.count("full_attention")
    assert attention_layers >= 1
    assert sum("prefix" in shape for shape in step.values()) == 2 * attention_layers  # their keys and values
    assert manifest.stage("context_kv").inputs[0].shape[1] == "prefix+6*cameras"


def test_the_onnx_graphs_keep_cameras_and_prefix_dynamic(tiny_onnx: Path) -> None:
    """The axes are symbolic in the graphs themselves, not only in the manifest."""
    manifest = read_export_manifest(tiny_onnx)
    for name in ("vision", "step_backbone", "context_kv", "dit_step"):
        stage = manifest.stage(name)
        graph = onnx.load(str(tiny_onnx / stage.file), load_external_data=False).graph
        for spec, value in zip(stage.inputs, graph.input):
            dims = value.type.tensor_type.shape.dim
            for axis, entry in enumerate(spec.shape):
                assert bool(dims[axis].dim_param) == isinstance(entry, str), (name, spec.name, axis)


def test_manifest_shapes_are_the_shapes_a_task_feeds(ort_policy, make_images, tiny_onnx: Path) -> None:
    manifest = read_export_manifest(tiny_onnx)
    for embodiment in ("aloha", "widowx"):
        images, _ = observation([ort_policy], embodiment, make_images)
        task = ort_policy.task
        feeds = stage_inputs(ort_policy, images)
        for name, inputs in feeds.items():
            expected = input_shapes(manifest.stage(name), len(task.cameras), len(task.layout.prefix_ids))
            assert list(expected.values()) == [tuple(t.shape) for t in inputs], (embodiment, name)


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("embodiment", ["aloha", "widowx"])
def test_every_stage_matches_torch(ort_policy, make_images, embodiment: str) -> None:
    """4 and 1 cameras, and different prefix lengths, through the same graphs."""
    images, _ = observation([ort_policy], embodiment, make_images)
    eager = {
        "vision": ort_policy.vision,
        "step_backbone": ort_policy.step_backbone,
        "context_kv": ort_policy.head.context_kv,
        "dit_step": ort_policy.head,
        "dit_guided": GuidedVelocity(ort_policy.head),  # autograd
    }
    calls = {
        "vision": ort_policy.stages.vision,
        "step_backbone": ort_policy.stages.step_backbone,
        "context_kv": ort_policy.stages.context_kv,
        "dit_step": ort_policy.stages.velocity,
        "dit_guided": ort_policy.stages.guided_velocity,
    }
    for name, inputs in stage_inputs(ort_policy, images).items():
        with torch.no_grad():
            expected = eager[name](*inputs)
            got = calls[name](*inputs)
        expected = (expected,) if isinstance(expected, torch.Tensor) else expected
        got = (got,) if isinstance(got, torch.Tensor) else got
        assert len(got) == len(expected), name
        for ours, theirs in zip(got, expected):
            assert ours.shape == theirs.shape, name
            assert float((ours - theirs).abs().max()) <= 1e-4, name


@pytest.mark.parametrize("embodiment", EMBODIMENTS)
def test_actions_equal_torch_with_the_same_seed(torch_policy, ort_policy, make_images, embodiment: str) -> None:
    images, state = observation([torch_policy, ort_policy], embodiment, make_images)
    expected = torch_policy.infer(images, state, seed=5).actions
    got = ort_policy.infer(images, state, seed=5).actions
    difference = np.abs(normalised(ort_policy, got) - normalised(torch_policy, expected)).max()
    assert difference <= 1e-3
    other_seed = ort_policy.infer(images, state, seed=6).actions
    assert np.abs(normalised(ort_policy, other_seed) - normalised(ort_policy, got)).max() > 1e-2


def test_real_time_chunking_runs_in_onnxruntime(torch_policy, ort_policy, make_images) -> None:
    """Guided steps use the exported VJP graph: same actions as torch's autograd, and the
    first delay_steps actions are the committed ones."""
    images, state = observation([torch_policy, ort_policy], "aloha", make_images)
    previous = torch_policy.infer(images, state, seed=1).actions
    committed, delay = previous[10:30] + 0.05, 4
    expected = torch_policy.infer(images, state, committed=committed, delay_steps=delay, seed=2).actions
    got = ort_policy.infer(images, state, committed=committed, delay_steps=delay, seed=2).actions
    assert np.abs(normalised(ort_policy, got) - normalised(torch_policy, expected)).max() <= 1e-3
    np.testing.assert_allclose(got[:delay], committed[:delay], atol=1e-4)
    calls = []
    guided = ort_policy.stages.engines["dit_guided"]
    original = guided.__call__

    class Spy:
        def __call__(self, *inputs):
            calls.append(len(inputs))
            return original(*inputs)

    ort_policy.stages.engines["dit_guided"] = Spy()
    try:
        ort_policy.infer(images, state, committed=committed, delay_steps=delay, seed=2)
    finally:
        ort_policy.stages.engines["dit_guided"] = guided
    assert len(calls) == ort_policy.num_steps, "every guided step runs the exported graph"


def test_int8_quantises_the_matrix_products_of_vision_backbone_and_context_kv(
        tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path, torch_policy, make_images) -> None:
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, folder)
    policy = load_policy(tiny_checkpoint, backend="onnxruntime", options=ort_options(folder, precision="int8"))
    quantised = sorted(p.name for p in folder.glob(f"*{QUANTISED_SUFFIX}"))
    assert quantised == [f"{name}{QUANTISED_SUFFIX}" for name in ("context_kv", "step_backbone", "vision")]
    backbone_operators = {node.op_type for node in onnx.load(folder / quantised[1]).graph.node}
    assert "MatMulInteger" in backbone_operators, "the weight matrix products run in int8"
    assert not backbone_operators & {"ConvInteger", "QLinearConv"}, "the causal convolution stays float32"
    for name in ("dit_step", "dit_guided"):
        assert not policy.stages.engines[name].path.name.endswith(QUANTISED_SUFFIX), f"{name} stays float32"
    assert policy.stages.name.startswith("onnxruntime int8")
    images, state = observation([torch_policy, policy], "aloha", make_images)
    exact = normalised(torch_policy, torch_policy.infer(images, state, seed=5).actions)
    approximate = normalised(policy, policy.infer(images, state, seed=5).actions)
    difference = np.abs(exact - approximate).max()
    assert 0 < difference < 0.1, "quantised, so close but not identical"


@pytest.fixture()
def denormals_kept():
    """This thread computing with denormals, whatever ran before; restored afterwards."""
    before = flushing()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(before)


def test_onnxruntime_flushes_denormals_to_zero_unless_kept(tmp_path: Path, denormals_kept: None) -> None:
    """A one-operator graph multiplies denormal floats by one: flushed they come back as zero.

    The session option covers onnxruntime's pool threads only; the calling thread's share of
    the work is flushed by ``flushed_denormals``, as the policy runs it. The floats are
    compared as bits, since with denormals-are-zero set numpy reads them as zero."""
    import onnxruntime
    from onnx import TensorProto, helper

    size = 1 << 20  # enough work to be split across both intra-op threads
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["y"])], "denormal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    path = tmp_path / "denormal.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    denormal = np.full(size, DENORMAL_BITS, dtype=np.uint32).view(np.float32)

    def run(flush: bool) -> np.ndarray:
        options = session_options(OnnxRuntimeSettings(intra_op_threads=2), flush)
        session = onnxruntime.InferenceSession(str(path), options, providers=[CPU])
        with flushed_denormals(flush):
            return session.run(None, {"x": denormal})[0].view(np.uint32)

    assert (run(flush=False) == DENORMAL_BITS).all()
    assert (run(flush=True) == 0).all()
    assert not flushing(), "the calling thread is restored afterwards"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_inference_flushes_denormals_as_configured_and_restores_the_thread(
        tiny_checkpoint: Path, tiny_onnx: Path, make_images, denormals_kept: None, backend: str) -> None:
    seen: list[bool] = []
    for flush in (True, False):
        options = BackendOptions(flush_denormals=flush, onnxruntime=OnnxRuntimeSettings(model_dir=str(tiny_onnx)))
        policy = load_policy(tiny_checkpoint, backend=backend, options=options)
        assert not flushing(), "loading leaves the thread as it found it"
        vision = policy.stages.vision

        def spy(*inputs, vision=vision):
            seen.append(flushing())
            return vision(*inputs)

        policy.stages.vision = spy
        images, state = observation([policy], "aloha", make_images)
        policy.infer(images, state, seed=1)
        assert not flushing(), "numpy and everything else in this thread compute with denormals again"
    assert seen == [True, False]


# ------------------------------------------------------------------ loading, cache and errors
def test_the_export_cache_is_reused_and_filled_on_demand(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = export_module.default_export_dir(checkpoint_fingerprint(tiny_checkpoint))
    assert cached.is_relative_to(tmp_path / "cache")
    exports = []

    def export_by_copy(policy, out, fingerprint, **kwargs) -> None:
        """Stands in for the minute-long export, which the session fixture already tests."""
        exports.append(Path(out))
        shutil.copytree(tiny_onnx, out)

    monkeypatch.setattr(export_module, "export_policy", export_by_copy)
    load_policy(tiny_checkpoint, backend="onnxruntime")
    assert exports == [cached] and (cached / "export.json").is_file()
    load_policy(tiny_checkpoint, backend="onnxruntime")
    assert exports == [cached], "the second load reuses the cached export"


def test_an_export_of_another_checkpoint_is_refused(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(tiny_onnx, stale)
    manifest = json.loads((stale / "export.json").read_text())
    manifest["checkpoint_fingerprint"] = "0" * 64
    (stale / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(OnnxExportError, match="re-export"):
        load_policy(tiny_checkpoint, backend="onnxruntime", options=ort_options(stale))
    (stale / "export.json").unlink()
    with pytest.raises(OnnxExportError, match="no export manifest"):
        load_policy(tiny_checkpoint, backend="onnxruntime", options=ort_options(stale))


def test_missing_model_files_are_named(tiny_onnx: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_onnx, broken)
    (broken / "dit_guided.onnx").unlink()
    with pytest.raises(OnnxExportError, match="dit_guided.onnx"):
        read_export_manifest(broken)


def test_more_cameras_than_exported_is_a_clear_error(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path,
                                                     make_images) -> None:
    narrow = tmp_path / "narrow"
    shutil.copytree(tiny_onnx, narrow)
    manifest = json.loads((narrow / "export.json").read_text())
    manifest["max_cameras"] = 2
    (narrow / "export.json").write_text(json.dumps(manifest))
    policy = load_policy(tiny_checkpoint, backend="onnxruntime", options=ort_options(narrow))
    policy.set_task("widowx", INSTRUCTION)
    with pytest.raises(OnnxExportError, match="--max-cameras 4"):
        policy.set_task("aloha", INSTRUCTION)
    assert policy.task.embodiment.name == "widowx", "the previous task stays in place"


def test_export_refuses_to_overwrite_a_folder_that_is_not_an_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_runtime_config_chooses_backend_settings_steps_and_guidance(tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    config = load_runtime(None, {
        "checkpoint": str(tiny_checkpoint), "backend": "onnxruntime", "onnxruntime.model_dir": str(tiny_onnx),
        "onnxruntime.intra_op_threads": 1, "denoising_steps": 2, "rtc.max_guidance_weight": 3.0,
    })
    policy = load_policy_from_config(config)
    assert policy.stages.name == "onnxruntime fp32 (CPUExecutionProvider)"
    assert policy.num_steps == 2 and policy.max_guidance_weight == 3.0
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_policy_from_config(load_runtime(None, {}))


def test_exported_backends_run_float32(tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="float32 ONNX export"):
        load_policy(tiny_checkpoint, backend="onnxruntime", dtype="bfloat16", options=ort_options(tiny_onnx))


# ------------------------------------------------------------------ providers (pure)
def test_providers_on_cpu_are_the_cpu_provider() -> None:
    assert choose_providers([TRT, CUDA, CPU], [CUDA, CPU], "cpu") == [CPU]
    with pytest.raises(InvalidArgumentError, match="omit"):
        choose_providers([CUDA], [CUDA, CPU], "cpu")


def test_providers_on_cuda_follow_the_preference_order_of_those_available() -> None:
    assert choose_providers([TRT, CUDA, CPU], [TRT, CUDA, CPU], "cuda") == [TRT, CUDA, CPU]
    assert choose_providers([TRT, CUDA, CPU], [CUDA, CPU], "cuda") == [CUDA, CPU]
    assert choose_providers([CUDA, TRT], [TRT, CUDA, CPU], "cuda") == [CUDA, TRT, CPU]
    with pytest.raises(InvalidArgumentError, match="onnxruntime-gpu"):
        choose_providers([TRT, CUDA, CPU], ["AzureExecutionProvider", CPU], "cuda")
    with pytest.raises(InvalidArgumentError, match="unsupported"):
        choose_providers(["OpenVINOExecutionProvider", CPU], [CPU], "cpu")


def test_gpu_providers_share_the_engine_stream_and_tensorrt_caches(tmp_path: Path) -> None:
    options = provider_options([TRT, CUDA, CPU], torch.device("cuda", 1), 1234, tmp_path)
    assert options[2] == {}
    assert options[1] == {"device_id": "1", "user_compute_stream": "1234"}
    assert options[0]["user_compute_stream"] == "1234" and options[0]["trt_engine_cache_path"] == str(tmp_path)
    assert options[0]["trt_engine_cache_enable"] == "True" and options[0]["trt_timing_cache_enable"] == "True"


def gpu_provider_missing(provider: str) -> str:
    """Why ``provider`` cannot run here, or '' when it can."""
    import onnxruntime

    if not torch.cuda.is_available():
        return f"CUDA is not available on this machine, so {provider} cannot run"
    available = onnxruntime.get_available_providers()
    if provider not in available:
        return f"this onnxruntime offers {available}, not {provider}: install onnxruntime-gpu (and TensorRT for its EP)"
    return ""


@pytest.mark.parametrize("provider", [
    pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=why))
    for name, why in ((name, gpu_provider_missing(name)) for name in (CUDA, TRT))
])
def test_onnxruntime_on_a_gpu_provider_matches_torch(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path,
                                                     make_images, provider: str) -> None:
    """Every session really runs on the requested GPU provider (ONNX Runtime would silently fall
    back to the CPU one), and the actions, unguided and with real-time chunking, equal torch's."""
    options = ort_options(tiny_onnx, providers=[provider, CPU], tensorrt_cache_dir=str(tmp_path))
    gpu = load_policy(tiny_checkpoint, backend="onnxruntime", device="cuda", options=options)
    assert set(gpu.stages.session_providers.values()) == {provider}
    reference = load_policy(tiny_checkpoint, device="cuda", dtype="float32", options=BackendOptions(cuda_graphs=False))
    images, state = observation([reference, gpu], "aloha", make_images)
    expected, got = reference.infer(images, state, seed=3).actions, gpu.infer(images, state, seed=3).actions
    assert np.abs(normalised(gpu, got) - normalised(reference, expected)).max() <= 1e-3
    committed = expected[10:30] + 0.05
    expected = reference.infer(images, state, committed=committed, delay_steps=4, seed=4).actions
    got = gpu.infer(images, state, committed=committed, delay_steps=4, seed=4).actions
    assert np.abs(normalised(gpu, got) - normalised(reference, expected)).max() <= 1e-3


# ------------------------------------------------------------------ bench
def test_bench_compares_onnxruntime_with_torch_eager(tiny_checkpoint: Path, tiny_onnx: Path, capsys) -> None:
    args = ["bench", "--checkpoint", str(tiny_checkpoint), "--backend", "onnxruntime", "--onnx-dir", str(tiny_onnx),
            "--compare", "torch", "--runs", "2", "--warmup", "1", "--json"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime fp32 (CPUExecutionProvider)"
    assert report["baseline"]["name"] == "torch" and report["baseline"]["stages"]["total"]["count"] == 2
    assert report["stages"]["dit_step"]["count"] == 2 * report["denoising_steps"]
    assert report["baseline"]["max_abs_action_diff"] < 1e-4 and report["speedup_p50"] > 0


def test_bench_with_an_exported_backend_needs_a_checkpoint(capsys) -> None:
    assert cli_main(["bench", "--size", "tiny", "--backend", "onnxruntime"]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
