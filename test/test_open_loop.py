"""bench/open_loop.py on a tiny synthetic LeRobot dataset (the export's own writer) with a random ``tiny``
checkpoint from the real builder: the hold baseline is checked against the dataset's own formula computed
here, and the policy's figures come from real inference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed: pip install '.[model]'")
pytest.importorskip("transformers", reason="transformers is not installed: pip install '.[model]'")
pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install '.[recording]'")
pytest.importorskip("cv2", reason="opencv is not installed: pip install opencv-python-headless")

from helpers.datasets import ALOHA, STEPS, synthetic_actions, synthetic_dataset  # noqa: E402

from bench import open_loop  # noqa: E402

FPS = 50  # the dataset's frame rate: ALOHA's control rate in config/aloha.yaml


def test_open_loop_sets_the_checkpoint_beside_holding_the_demonstrations_command(
        tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    synthetic_dataset(tmp_path / "data")
    horizon = 5
    assert open_loop.main(["--checkpoint", str(tiny_checkpoint), "--dataset", str(tmp_path / "data"), "--stride", "1",
                           "--horizon-s", str(horizon / FPS), "--reach-s", str(4.5 / FPS)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == STEPS and result["episodes"] == 1 and result["horizon_steps"] == horizon
    assert result["reach"]["rows"] == 5 and result["after_reach"]["rows"] == STEPS - 5

    # The baseline by hand: from row r the demonstration commands rows r.. (the episode's last repeated after its
    # end); holding row r's command is off by |actions[r + k] - actions[r]| at step k.
    actions = synthetic_actions()
    grippers = [k for k, name in enumerate(ALOHA.action.names) if name.endswith("gripper")]
    joints = [k for k in range(actions.shape[1]) if k not in grippers]
    assert len(grippers) == 2 and len(joints) == 12
    ahead = np.stack([actions[np.minimum(np.arange(r, r + horizon), STEPS - 1)] for r in range(STEPS)])
    held_off = np.abs(ahead - ahead[:, :1])
    for part, rows in (("reach", slice(0, 5)), ("after_reach", slice(5, STEPS))):
        for group, channels in (("joints_rad", joints), ("grippers", grippers)):
            figures = result[part][group]
            assert figures["hold"] == pytest.approx(held_off[rows][:, :, channels].mean(), abs=1e-4), (part, group)
            assert np.isfinite(figures["policy"]) and figures["policy"] > 0.0
            assert figures["policy_over_hold"] == pytest.approx(figures["policy"] / figures["hold"], rel=1e-2)
