"""Every error class the package defines derives from QwenVlaError, and no two share a name.

Read from the source (ast), not by importing every module: some need torch or TensorRT. A new
error class that forgets the base, or a second class reusing a name (two ``ExportError``s
once meant different things in model/ and recording/), fails here.
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.errors import DatasetError, InvalidArgumentError, MalformedMessageError, PolicyInputError, QwenVlaError

PACKAGE = Path(__file__).resolve().parent.parent / "qwen_vla_ros"
BUILTIN_BASES = {"Exception", "ValueError", "RuntimeError", "ImportError", "KeyError", "OSError", "TypeError"}


def error_classes() -> list[tuple[str, str, list[str]]]:
    """(file, class, base names) of every class deriving from a builtin exception or a name ending in Error."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base) for base in node.bases]
                if any(base in BUILTIN_BASES or base.endswith(("Error", "Exception")) for base in bases):
                    found.append((str(path.relative_to(PACKAGE)), node.name, bases))
    return found


def test_the_scan_finds_the_known_errors() -> None:
    names = {name for _, name, _ in error_classes()}
    assert {"ConfigError", "SourceError", "BuildUnavailable", "OnnxExportError", "DatasetExportError"} <= names


@pytest.mark.parametrize(("path", "name", "bases"), error_classes(), ids=lambda value: value if isinstance(value, str) else "")
def test_each_error_derives_from_the_base(path: str, name: str, bases: list[str]) -> None:
    if name == "QwenVlaError":
        return
    assert "QwenVlaError" in bases, f"{path}: class {name}({', '.join(bases)}) must also derive from QwenVlaError"


def test_error_names_are_unique() -> None:
    counts = Counter(name for _, name, _ in error_classes())
    assert [name for name, n in counts.items() if n > 1] == []


def test_a_domain_error_is_still_its_builtin() -> None:
    """Callers that catch ValueError keep catching ConfigError."""
    error = ConfigError("x.yaml", ["bad"])
    assert isinstance(error, QwenVlaError) and isinstance(error, ValueError)


@pytest.mark.parametrize("error_class", [MalformedMessageError, InvalidArgumentError, PolicyInputError, DatasetError])
def test_message_and_argument_errors_are_still_value_errors(error_class: type[QwenVlaError]) -> None:
    """nodes/controller.py and nodes/sim_node.py catch the ValueError/KeyError that the control, teleop
    and sim cores raised before these classes existed; they keep catching them, as callers of
    ``Policy.infer`` that catch ValueError keep catching PolicyInputError."""
    error = error_class("bad")
    assert isinstance(error, QwenVlaError) and isinstance(error, ValueError)
