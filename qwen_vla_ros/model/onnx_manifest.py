"""The exported-models folder's manifest, ``export.json``, and the shape arithmetic on it (no torch).

``qwen-vla-ros export`` writes one ONNX model per stage and this manifest beside them. It
records which checkpoint they came from (its content fingerprint), the opset, the largest
camera count the graphs were built for, and every input and output with its shape. A shape
entry is an integer or a linear form over the two things that vary at run time:

- ``cameras``: the embodiment's camera count (vision and per-step backbone);
- ``prefix``: the task's prefix token count (the cached keys/values, the head's context).

e.g. ``"49*cameras"`` or ``"prefix+51*cameras"``. The ONNX Runtime backend checks a task
against these limits, and the TensorRT backend turns them into optimisation profiles.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from qwen_vla_ros.config.base import StrictModel
from qwen_vla_ros.config.loader import describe_validation_error
from qwen_vla_ros.errors import QwenVlaError

EXPORT_MANIFEST = "export.json"
STAGES = ("vision", "step_backbone", "context_kv", "dit_step", "dit_guided")
VARIABLES = ("cameras", "prefix")
_TERM = re.compile(r"^(?:(\d+)\*)?(cameras|prefix)$|^(\d+)$")

Dim = int | str


class OnnxExportError(QwenVlaError, ValueError):
    """An exported-models folder is missing, incomplete or made from another checkpoint."""


class TensorSpec(StrictModel):
    name: str
    shape: list[Dim]
    dtype: str


class StageModel(StrictModel):
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    min_cameras: int = Field(ge=0, description="vision and step need a camera; the head also runs without")


class ExportManifest(StrictModel):
    format: Literal["qwen_vla_onnx"] = "qwen_vla_onnx"
    version: Literal[1] = 1
    checkpoint: str
    checkpoint_fingerprint: str
    opset: int
    torch_version: str
    dtype: Literal["float32"] = "float32"
    max_cameras: int = Field(ge=1)
    stages: dict[str, StageModel]

    def stage(self, name: str) -> StageModel:
        if name not in self.stages:
            raise OnnxExportError(f"the export has no {name!r} model (it has {sorted(self.stages)})")
        return self.stages[name]


def evaluate_dim(dim: Dim, cameras: int, prefix: int) -> int:
    """The size of one shape entry for a camera count and a prefix length."""
    if isinstance(dim, int):
        return dim
    values = {"cameras": cameras, "prefix": prefix}
    total = 0
    for term in dim.replace(" ", "").split("+"):
        match = _TERM.match(term)
        if match is None:
            raise OnnxExportError(f"malformed shape entry {dim!r}: terms are N, N*cameras, cameras, N*prefix or prefix")
        factor, variable, constant = match.groups()
        total += int(constant) if constant is not None else int(factor or 1) * values[variable]
    return total


def input_shapes(stage: StageModel, cameras: int, prefix: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of one stage for a camera count and a prefix length."""
    return {spec.name: tuple(evaluate_dim(d, cameras, prefix) for d in spec.shape) for spec in stage.inputs}


def write_export_manifest(manifest: ExportManifest, folder: Path) -> Path:
    path = folder / EXPORT_MANIFEST
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path


def read_export_manifest(folder: str | Path) -> ExportManifest:
    """The manifest of an exported folder, with every stage file present; OnnxExportError otherwise."""
    root = Path(folder).expanduser()
    path = root / EXPORT_MANIFEST
    if not path.is_file():
        raise OnnxExportError(f"{path}: no export manifest; run `qwen-vla-ros export --checkpoint DIR --out {root}`")
    try:
        manifest = ExportManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise OnnxExportError(f"{path}: not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise OnnxExportError(f"{path}: " + "; ".join(describe_validation_error(exc))) from exc
    missing = [name for name in STAGES if name not in manifest.stages]
    if missing:
        raise OnnxExportError(f"{path}: stages {missing} are missing; re-export")
    absent = [str(root / stage.file) for stage in manifest.stages.values() if not (root / stage.file).is_file()]
    if absent:
        raise OnnxExportError(f"{path}: model file(s) {absent} are missing; re-export")
    return manifest
