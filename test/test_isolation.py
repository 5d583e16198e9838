"""The test session itself: nothing it runs can write into the user's home directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REAL_HOME


def test_tests_and_their_child_processes_have_a_home_of_their_own(private_home: Path) -> None:
    """HOME and the XDG folders point into the session's temporary folder, here and in child
    processes, so defaults such as the recorder's ``~/qwen_vla_trials`` land there."""
    code = ("import os, pathlib; print(pathlib.Path('~/qwen_vla_trials').expanduser()); "
            "print(os.environ['XDG_CACHE_HOME']); print(os.environ['ROS_HOME'])")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert lines == [str(private_home / "qwen_vla_trials"), str(private_home / ".cache"), str(private_home / ".ros")]
    assert Path.home() == private_home
    assert not private_home.resolve().is_relative_to(REAL_HOME.resolve()), "the private home lies outside the real one"
