"""Checkpoint fingerprints follow content, not names or timestamps."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from qwen_vla_ros.model.fingerprint import checkpoint_fingerprint


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_fingerprint_is_sha256_of_sorted_paths_sizes_and_bytes(tmp_path: Path) -> None:
    root = _write(tmp_path / "ckpt", {"b/w.bin": b"\x01\x02", "a.json": b"{}"})
    expected = hashlib.sha256(b"a.json\x002\x00{}" + b"b/w.bin\x002\x00\x01\x02").hexdigest()
    assert checkpoint_fingerprint(root) == expected


def test_fingerprint_changes_with_content_not_with_touch(tmp_path: Path) -> None:
    root = _write(tmp_path / "ckpt", {"w.bin": b"abc"})
    first = checkpoint_fingerprint(root)
    os.utime(root / "w.bin", ns=(1, 1))
    assert checkpoint_fingerprint(root) == first
    (root / "w.bin").write_bytes(b"abd")
    assert checkpoint_fingerprint(root) != first


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_fingerprint(tmp_path / "nope")
