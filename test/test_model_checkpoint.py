"""Checkpoints: make-checkpoint writes a directory that really loads; every missing or
inconsistent file is reported by name; the package and CLI stay cheap to import."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")

from safetensors.torch import load_file, save_file  # noqa: E402

from qwen_vla_ros.cli import main as cli_main  # noqa: E402
from qwen_vla_ros.config import EMBODIMENTS, load_embodiment  # noqa: E402
from qwen_vla_ros.errors import InvalidArgumentError  # noqa: E402
from qwen_vla_ros.model import load_policy  # noqa: E402
from qwen_vla_ros.model.checkpoint import CheckpointError, read_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_make_checkpoint_writes_the_documented_layout(tiny_checkpoint: Path) -> None:
    backbone = tiny_checkpoint / "backbone"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (backbone / name).is_file(), name
    assert (tiny_checkpoint / "action_head.safetensors").is_file()
    manifest = json.loads((tiny_checkpoint / "qwen_vla.json").read_text())
    assert sorted(manifest["embodiments"]) == sorted(EMBODIMENTS)
    for name in EMBODIMENTS:
        config, entry = load_embodiment(name), manifest["embodiments"][name]
        assert entry["normalization"] == config.normalization.model_dump(mode="json")
        assert entry["action_dt"] == config.control.action_dt and entry["chunk_length"] == config.control.chunk_length
    assert 1 <= manifest["sampling"]["default_steps"] <= 10


def test_backbone_is_a_standard_qwen35_checkpoint(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer, Qwen3_5ForConditionalGeneration

    model = Qwen3_5ForConditionalGeneration.from_pretrained(tiny_checkpoint / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint / "backbone")
    assert type(tokenizer).__name__ == "Qwen3_5Tokenizer"
    for token, key in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id")):
        assert tokenizer.convert_tokens_to_ids(token) == getattr(model.config, key)
    assert set(model.config.text_config.layer_types) == {"linear_attention", "full_attention"}


def test_make_checkpoint_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new"
    assert cli_main(["make-checkpoint", "--size", "tiny", str(out)]) == 0
    assert "wrote tiny checkpoint" in capsys.readouterr().out
    read_checkpoint(out)
    assert cli_main(["make-checkpoint", "--size", "tiny", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_has_the_published_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    """Built on the meta device: shapes and parameter counts without memory."""
    assert cli_main(["make-checkpoint", "--size", "full", "--dry-run"]) == 0
    counts = json.loads(capsys.readouterr().out)["parameters"]
    assert 4.3e9 <= counts["backbone"] <= 4.8e9  # Qwen3.5-4B: ~4.5B with its vision tower
    assert 1.1e9 <= counts["action_head"] <= 1.2e9  # 1.15B DiT


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _drop_tensor(path: Path, prefix: str) -> None:
    tensors = load_file(str(path))
    name = next(n for n in tensors if n.startswith(prefix))
    del tensors[name]
    save_file(tensors, str(path))


def _add_layer_copy(path: Path, prefix: str, renamed: str) -> None:
    """Tensors of a layer config.json does not have: as if the weights came from a deeper model."""
    tensors = load_file(str(path))
    layer = prefix.rsplit("layers.", 1)[1]
    tensors.update({n.replace(f"layers.{layer}", renamed): t.clone() for n, t in tensors.items() if n.startswith(prefix)})
    save_file(tensors, str(path))


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "no manifest": (lambda root: (root / "qwen_vla.json").unlink(), "qwen_vla.json", "file is missing"),
    "manifest not json": (lambda root: (root / "qwen_vla.json").write_text("{oops"), "qwen_vla.json", "not valid JSON"),
    "manifest bad field": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["sampling"].update(default_steps=20)),
        "qwen_vla.json", "sampling.default_steps",
    ),
    "manifest unknown key": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["action_head"].update(widht=3)),
        "qwen_vla.json", "action_head.widht: unknown field",
    ),
    "no backbone config": (lambda root: (root / "backbone/config.json").unlink(), "backbone/config.json", "missing"),
    "no tokenizer": (lambda root: (root / "backbone/tokenizer.json").unlink(), "backbone/tokenizer.json", "missing"),
    "no processor config": (
        lambda root: (root / "backbone/preprocessor_config.json").unlink(), "preprocessor_config.json", "missing",
    ),
    "no backbone weights": (
        lambda root: (root / "backbone/model.safetensors").unlink(), "backbone/model.safetensors", "no backbone weights",
    ),
    "no head weights": (
        lambda root: (root / "action_head.safetensors").unlink(), "action_head.safetensors", "weights are missing",
    ),
    "feature layer too deep": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["backbone"].update(feature_layers=[3, 9])),
        "qwen_vla.json", "exceed the backbone's 6 layers",
    ),
    "context dim": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["backbone"].update(feature_layers=[3])),
        "qwen_vla.json", "action_head.context_dim is 128",
    ),
    "resolution": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["vision"].update(image_height=70)),
        "qwen_vla.json", "not a multiple of",
    ),
    "tokenizer from another model": (
        lambda root: _edit_json(root / "backbone/config.json", lambda c: c.update(image_token_id=6)),
        "backbone/tokenizer.json", "<|image_pad|> has id 5 but",
    ),
    "vocabulary larger than the embeddings": (
        lambda root: _edit_json(root / "backbone/config.json", lambda c: c["text_config"].update(vocab_size=100)),
        "backbone/tokenizer.json", "does not fit text_config.vocab_size = 100",
    ),
    "processor patch size": (
        lambda root: _edit_json(root / "backbone/preprocessor_config.json", lambda p: p.update(patch_size=14)),
        "preprocessor_config.json", "patch_size is 14",
    ),
    "mask outside padding": (
        lambda root: _edit_json(
            root / "qwen_vla.json", lambda m: m["embodiments"]["widowx"].update(action_mask=[0, 1, 2, 3, 4, 5, 40])
        ),
        "qwen_vla.json", "outside [0, 32)",
    ),
    "head shape": (
        lambda root: _edit_json(root / "qwen_vla.json", lambda m: m["action_head"].update(width=32)),
        "action_head.safetensors", "wrong shape",
    ),
    "head tensor missing": (
        lambda root: _drop_tensor(root / "action_head.safetensors", "blocks.1."),
        "action_head.safetensors", "missing",
    ),
    "backbone tensor unexpected": (
        lambda root: _add_layer_copy(root / "backbone/model.safetensors", "model.language_model.layers.2.", "layers.9."),
        "backbone/model.safetensors", "unexpected_keys",
    ),
    "backbone tensor missing": (
        lambda root: _drop_tensor(root / "backbone/model.safetensors", "model.language_model.layers.2."),
        "backbone/model.safetensors", "missing_keys",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_checkpoints_name_the_file(tiny_checkpoint: Path, tmp_path: Path, breakage: str) -> None:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    corrupt, file_name, words = BREAKAGES[breakage]
    corrupt(root)
    with pytest.raises(CheckpointError) as raised:
        load_policy(root)
    message = str(raised.value)
    assert file_name in message and words in message, message


def test_missing_directory_backend_device_and_dtype_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    with pytest.raises(InvalidArgumentError, match="backend 'tensorflow' is not available"):
        load_policy(tiny_checkpoint, backend="tensorflow")
    with pytest.raises(InvalidArgumentError, match="dtype must be one of"):
        load_policy(tiny_checkpoint, dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
            load_policy(tiny_checkpoint, device="cuda")


def test_cli_reports_a_broken_checkpoint_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ckpt").mkdir()
    assert cli_main(["bench", "--checkpoint", str(tmp_path / "ckpt"), "--runs", "1"]) == 2
    assert "qwen_vla.json: file is missing" in capsys.readouterr().err


def test_importing_the_model_package_and_cli_does_not_import_torch() -> None:
    code = (
        "import sys, qwen_vla_ros.model, qwen_vla_ros.model.checkpoint, qwen_vla_ros.model.fingerprint, qwen_vla_ros.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
