"""Locate the package's shared data (config/, urdf/, launch/) however it was installed.

Three layouts exist: a colcon install (found through the ament index), a pip install
(data_files land in ``<prefix>/share/qwen_vla_ros``), and a source checkout used with
PYTHONPATH or an editable install.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

PACKAGE = "qwen_vla_ros"


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, LookupError, OSError, ValueError):  # OSError: AMENT_PREFIX_PATH unset
        return None


def _candidates() -> Iterator[Path]:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "package.xml").is_file():
        yield checkout
    yield Path(sys.prefix) / "share" / PACKAGE
    ament = _ament_share()
    if ament is not None:
        yield ament


@lru_cache(maxsize=1)
def share_dir() -> Path:
    tried = []
    for candidate in _candidates():
        if (candidate / "config").is_dir():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} share directory (config/, urdf/, launch/); looked in {tried}. "
        "Reinstall the package."
    )


def config_dir() -> Path:
    return share_dir() / "config"


def urdf_dir() -> Path:
    return share_dir() / "urdf"


def launch_dir() -> Path:
    return share_dir() / "launch"


def reference_checkpoint_dir() -> Path:
    """Where the shipped reference checkpoint (ALOHA transfer-cube, issue 20) lives; it may not exist yet."""
    return share_dir() / "checkpoints" / "aloha_transfer_cube"
