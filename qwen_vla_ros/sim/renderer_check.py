"""Can MuJoCo render here? Asked once at start-up, so a missing EGL or OSMesa library is one
clear line naming the package to install, not a traceback from deep inside PyOpenGL.

The probe runs in a child interpreter: with a broken backend ``import mujoco`` itself can fail
(PyOpenGL raises AttributeError at import), and a half-imported module cannot be retried in
the same process. No ROS import.
"""
from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"
INSTALL = {
    "egl": "install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri), "
           "or use OSMesa instead (apt-get install libosmesa6, then MUJOCO_GL=osmesa)",
    "osmesa": "install OSMesa (Debian/Ubuntu: apt-get install libosmesa6), "
              "or use EGL instead (apt-get install libegl1 libgl1-mesa-dri, then MUJOCO_GL=egl)",
}
WITHOUT_CAMERAS = ("to run without cameras, start sim_node with camera_rate_hz:=0 "
                   "(qwen-vla-ros up --sim --no-sim-cameras); the policy then receives no images")


def renderer_problem(environment: dict[str, str] | None = None, timeout_s: float = 60.0) -> str | None:
    """None when MuJoCo can make an offscreen GL context with this environment's MUJOCO_GL
    (default egl); otherwise what failed, what to install and how to run without cameras."""
    env = dict(os.environ if environment is None else environment)
    backend = env.setdefault("MUJOCO_GL", "egl").lower()
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"MuJoCo could not open a GL context with MUJOCO_GL={backend} within {timeout_s:g} s; {WITHOUT_CAMERAS}"
    if probe.returncode == 0:
        return None
    lines = [line for line in probe.stderr.strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else f"exit code {probe.returncode}"
    advice = INSTALL.get(backend, f"MUJOCO_GL={backend} needs a display; headless machines use MUJOCO_GL=egl")
    return f"cannot render with MUJOCO_GL={backend} ({cause}): {advice}; {WITHOUT_CAMERAS}"
