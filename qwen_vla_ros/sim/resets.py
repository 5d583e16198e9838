"""The sim's resets: seeded task conditions, the randomisation an evaluation asks for, and what
each reset reports back.

Fields arriving on ``contract.SIM_RANDOMIZATION`` (a JSON object, over the config's
randomisation; ``{}`` goes back to the config's) apply from the next reset, which echoes them,
so a caller can tell when they took effect. Bad fields are refused and every reset fails with
the reason until good ones arrive: a trial must not run under conditions nobody asked for.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from qwen_vla_ros.config.sim import AlohaRandomization
from qwen_vla_ros.contract import SIM_RANDOMIZATION
from qwen_vla_ros.sim.world import Simulation


class Resets:
    def __init__(self, sim: Simulation, seed: int) -> None:
        """Resets ``sim`` once now, with the first draw of ``seed``."""
        self.sim, self.seed = sim, seed
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.randomization: AlohaRandomization | None = None  # None: the config's
        self.fields: dict[str, Any] = {}  # as received, echoed by every reset
        self.error: str | None = None
        self.conditions = sim.reset(self.rng)

    def vary(self, text: str) -> bool:
        """Take fields over the config's randomisation; False (and ``error`` says why) when refused."""
        base = getattr(self.sim.settings, "randomization", None)
        try:
            fields = json.loads(text)
            if base is None:
                raise ValueError(f"{self.sim.settings.type} sims have no randomization to vary")
            if not isinstance(fields, dict):
                raise TypeError(f"expected a JSON object, got {type(fields).__name__}")
            self.randomization = AlohaRandomization.model_validate({**base.model_dump(), **fields}) if fields else None
        except (ValueError, TypeError) as exc:
            self.error = f"{SIM_RANDOMIZATION.name}: refused {text!r}: {exc}"
            return False
        self.fields, self.error = fields, None
        return True

    def reset(self) -> tuple[bool, str]:
        """(success, message): the reset's JSON report (seed, count, conditions drawn, the fields in
        force), or why it was refused."""
        if self.error is not None:
            return False, self.error
        self.conditions = self.sim.reset(self.rng, self.randomization)
        self.count += 1
        return True, json.dumps({"seed": self.seed, "reset": self.count, **self.conditions,
                                 "randomization": self.fields})
