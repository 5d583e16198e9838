"""OOD protocols: conditions, schedules, the next trial after verdicts, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qwen_vla_ros.config import ConfigError
from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.paths import config_dir
from qwen_vla_ros.recording.protocol import Protocol, announce, load_protocol, next_trial, parse_condition

LIGHT = {"name": "lighting", "levels": ["bright", "dim", "colored"]}
BACKGROUND = {"name": "background", "levels": ["plain", {"name": "clutter", "instruction": "find the cube"}]}


def _protocol(**fields) -> Protocol:
    return Protocol.model_validate({"name": "p", "factors": [LIGHT, BACKGROUND], "trials_per_condition": 2, **fields})


def test_factorial_design_crosses_every_level() -> None:
    conditions = _protocol().condition_list()
    assert len(conditions) == 6
    assert conditions[0] == {"lighting": "bright", "background": "plain"}
    assert {tuple(c.values()) for c in conditions} == {
        (light, background) for light in ("bright", "dim", "colored") for background in ("plain", "clutter")
    }


def test_one_at_a_time_design_varies_one_factor_from_the_baseline() -> None:
    conditions = _protocol(design="one_at_a_time").condition_list()
    assert conditions == [
        {"lighting": "bright", "background": "plain"},
        {"lighting": "dim", "background": "plain"},
        {"lighting": "colored", "background": "plain"},
        {"lighting": "bright", "background": "clutter"},
    ]


@pytest.mark.parametrize("order", ["sequential", "round_robin", "shuffled"])
def test_every_order_runs_each_condition_trials_per_condition_times(order: str) -> None:
    protocol = _protocol(order=order, seed=3)
    schedule = protocol.schedule()
    assert len(schedule) == 12
    for condition in protocol.condition_list():
        assert schedule.count(condition) == 2
    if order == "sequential":
        assert schedule[0] == schedule[1]
    if order == "round_robin":
        assert schedule[:6] == protocol.condition_list()


def test_shuffled_order_is_reproducible_from_its_seed() -> None:
    assert _protocol(order="shuffled", seed=1).schedule() == _protocol(order="shuffled", seed=1).schedule()
    assert _protocol(order="shuffled", seed=1).schedule() != _protocol(order="shuffled", seed=2).schedule()


def test_next_trial_skips_only_slots_filled_by_verdicts() -> None:
    protocol = _protocol(design="one_at_a_time", trials_per_condition=2)
    baseline = {"lighting": "bright", "background": "plain"}
    dim = {"lighting": "dim", "background": "plain"}
    first = next_trial(protocol, [])
    assert (first.slot, first.condition, first.completed, first.total) == (1, baseline, 0, 8)
    # one verdict on the baseline, one trial on a hand-set condition outside the protocol
    after = next_trial(protocol, [baseline, {"lighting": "sunset", "background": "plain"}])
    assert (after.slot, after.condition, after.completed) == (2, baseline, 1)
    # verdicts out of schedule order still fill their own condition's slots
    later = next_trial(protocol, [dim, baseline, baseline])
    assert (later.slot, later.condition, later.completed) == (4, dim, 3)
    assert next_trial(protocol, [c for c in protocol.schedule()]) is None


def test_level_instruction_overrides_the_protocols() -> None:
    protocol = _protocol(instruction="pick up the cube")
    assert protocol.instruction_for({"lighting": "dim", "background": "plain"}) == "pick up the cube"
    assert protocol.instruction_for({"lighting": "dim", "background": "clutter"}) == "find the cube"


def test_explicit_design_checks_its_conditions() -> None:
    protocol = _protocol(design="explicit", conditions=[{"lighting": "dim", "background": "plain"}])
    assert protocol.schedule() == [{"lighting": "dim", "background": "plain"}] * 2
    with pytest.raises(ValueError, match=r"conditions\[0\]: factor 'lighting' has no level 'dark'"):
        _protocol(design="explicit", conditions=[{"lighting": "dark", "background": "plain"}])


def test_check_condition_names_the_problem() -> None:
    protocol = _protocol()
    assert protocol.check_condition({"background": "plain", "lighting": "dim"}) == {"lighting": "dim", "background": "plain"}
    with pytest.raises(InvalidArgumentError, match=r"unknown factors \['weather'\]"):
        protocol.check_condition({"lighting": "dim", "background": "plain", "weather": "rain"})
    with pytest.raises(InvalidArgumentError, match=r"no level for factors \['background'\]"):
        protocol.check_condition({"lighting": "dim"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("lighting=dim, background=clutter", {"lighting": "dim", "background": "clutter"}),
        ("{lighting: dim}", {"lighting": "dim"}),
        ('{"lighting": "dim"}', {"lighting": "dim"}),
    ],
)
def test_parse_condition(text: str, expected: dict) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize("text", ["lighting", "lighting=", "[dim]", "{lighting: [a, b]}"])
def test_parse_condition_rejects_what_is_not_a_mapping(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="condition"):
        parse_condition(text)


@pytest.mark.parametrize(
    "document, problem",
    [
        ({"factors": [LIGHT], "trials_per_condition": 1}, "name: required field is missing"),
        ({"name": "p", "factors": [LIGHT]}, "trials_per_condition: required field is missing"),
        ({"name": "p", "factors": [LIGHT], "trials_per_condition": 0},
         "trials_per_condition: Input should be greater than or equal to 1 (got 0)"),
        ({"name": "p", "factors": [{"name": "light", "levels": ["a", "a"]}], "trials_per_condition": 1},
         "factors[0].levels: level names must be unique, duplicated: ['a']"),
        ({"name": "p", "factors": [LIGHT, LIGHT], "trials_per_condition": 1},
         "factors: factor names must be unique, duplicated: ['lighting']"),
        ({"name": "p", "factors": [LIGHT], "trials_per_condition": 1, "trails": 3}, "trails: unknown field (value 3)"),
        ({"name": "p", "factors": [LIGHT], "trials_per_condition": 1, "order": "random"},
         "order: Input should be 'sequential', 'round_robin' or 'shuffled' (got 'random')"),
        ({"name": "p", "factors": [LIGHT], "trials_per_condition": 1, "design": "explicit"},
         "design 'explicit' needs a non-empty 'conditions' list"),
    ],
)
def test_bad_protocol_yaml_is_a_clear_error(tmp_path: Path, document: dict, problem: str) -> None:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as error:
        load_protocol(path)
    assert any(problem in line for line in error.value.problems), error.value.problems
    assert str(path) in str(error.value)


def test_protocol_that_is_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "protocol.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_protocol(path)


def test_shipped_example_protocols_load() -> None:
    paths = sorted((config_dir() / "protocols").glob("*.yaml"))
    assert paths, "config/protocols/ ships at least one example"
    for path in paths:
        assert load_protocol(path).schedule()


def test_announcement_says_what_comes_next() -> None:
    protocol = _protocol(design="one_at_a_time", trials_per_condition=1)
    upcoming = next_trial(protocol, [])
    text = json.loads(announce(protocol, upcoming, None))
    assert text["condition"] == {"lighting": "bright", "background": "plain"} and text["remaining"] == 4
    assert json.loads(announce(protocol, None, None))["done"] is True
    manual = json.loads(announce(protocol, upcoming, {"lighting": "dim", "background": "clutter"}))
    assert manual["source"] == "parameter" and manual["instruction"] == "find the cube"


def test_levels_set_sim_randomisation_fields_and_unknown_ones_are_refused(tmp_path) -> None:
    from qwen_vla_ros.cli import main as cli_main
    from qwen_vla_ros.recording.protocol import load_protocol

    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\ntrials_per_condition: 1\ndesign: one_at_a_time\nfactors:\n"
        "  - {name: light, levels: [trained, {name: dim, sim: {light_scale: [0.4, 0.6]}}]}\n"
        "  - {name: clutter, levels: [none, {name: cylinder, sim: {distractor: true}}]}\n"
    )
    protocol = load_protocol(path)
    assert protocol.sim_for({"light": "dim", "clutter": "none"}) == {"light_scale": [0.4, 0.6]}
    assert protocol.sim_for({"light": "trained", "clutter": "cylinder"}) == {"distractor": True}
    assert protocol.sim_for({"light": "trained", "clutter": "none"}) == {}
    path.write_text(path.read_text().replace("light_scale", "light_level"))
    assert cli_main(["check-config", str(path)]) == 2
