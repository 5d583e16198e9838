"""Process environment for ROS: the rclpy-origin guard (PyPI ROS wheels must never silently shadow a
sourced distribution), the DDS profile of each mode, and SROS2 settings that must not run open."""
from __future__ import annotations

import ipaddress
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qwen_vla_ros.paths import config_dir
from qwen_vla_ros.ros_env import (
    DDS_PROFILE_ENV,
    MULTI_HOST_ENV,
    apply_dds_profile,
    dds_environment,
    dds_notice,
    dds_profile_path,
    enclave_name,
    missing_enclaves,
    rclpy_origin_problem,
    security_environment,
    security_problem,
    with_dds_profile,
)


def test_no_distribution_sourced_means_no_problem() -> None:
    assert rclpy_origin_problem("/venv/lib/python3.11/site-packages/rclpy/__init__.py", env={}) is None


def test_rclpy_from_the_sourced_distribution_is_fine() -> None:
    env = {"ROS_DISTRO": "jazzy", "AMENT_PREFIX_PATH": "/opt/ros/jazzy"}
    assert rclpy_origin_problem("/opt/ros/jazzy/lib/python3.12/site-packages/rclpy/__init__.py", env) is None


def test_wheel_rclpy_under_a_sourced_distribution_is_reported() -> None:
    env = {"ROS_DISTRO": "humble", "AMENT_PREFIX_PATH": "/home/me/ws/install/pkg:/opt/ros/humble"}
    problem = rclpy_origin_problem("/home/me/venv/lib/python3.10/site-packages/rclpy/__init__.py", env)
    assert problem is not None and "humble" in problem and "ros-wheels" in problem


def test_user_profile_wins_over_shipped_profile() -> None:
    assert with_dds_profile({})[DDS_PROFILE_ENV] == str(dds_profile_path())
    assert with_dds_profile({DDS_PROFILE_ENV: "/etc/mine.xml"})[DDS_PROFILE_ENV] == "/etc/mine.xml"
    assert dds_profile_path().is_file()


# -- DDS confinement: which profile and discovery range each mode runs with ----------------------

PROFILE_NS = "{http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles}"


def transports(profile: Path) -> dict[str, ET.Element]:
    """transport_id -> descriptor, of those the default participant profile uses."""
    root = ET.parse(profile).getroot()
    descriptors = {d.findtext(f"{PROFILE_NS}transport_id"): d for d in root.iter(f"{PROFILE_NS}transport_descriptor")}
    participant = next(p for p in root.iter(f"{PROFILE_NS}participant") if p.get("is_default_profile") == "true")
    rtps = participant.find(f"{PROFILE_NS}rtps")
    assert rtps.findtext(f"{PROFILE_NS}useBuiltinTransports") == "false", "builtin transports would listen on every interface"
    return {tid.text: descriptors[tid.text] for tid in rtps.iter(f"{PROFILE_NS}transport_id")}


def test_single_host_profile_talks_over_shared_memory_and_loopback_only() -> None:
    used = transports(config_dir() / "fastdds_shm.xml")
    kinds = sorted(d.findtext(f"{PROFILE_NS}type") for d in used.values())
    assert kinds == ["SHM", "UDPv4"]
    udp = next(d for d in used.values() if d.findtext(f"{PROFILE_NS}type") == "UDPv4")
    allowed = [i.get("name") for i in udp.iter(f"{PROFILE_NS}interface")]
    assert allowed and all(ipaddress.ip_address(name).is_loopback for name in allowed)
    for d in used.values():
        if d.findtext(f"{PROFILE_NS}type") == "SHM":
            assert int(d.findtext(f"{PROFILE_NS}segment_size")) >= 640 * 480 * 3 * 4, "camera frames need the segment"


def test_multi_host_profile_widens_only_the_udp_interfaces() -> None:
    single, multi = transports(config_dir() / "fastdds_shm.xml"), transports(config_dir() / "fastdds_multi_host.xml")
    kinds = sorted(d.findtext(f"{PROFILE_NS}type") for d in multi.values())
    assert kinds == ["SHM", "UDPv4"]
    udp = next(d for d in multi.values() if d.findtext(f"{PROFILE_NS}type") == "UDPv4")
    assert udp.find(f"{PROFILE_NS}interfaces") is None
    shm = [ET.tostring(d) for d in single.values() if d.findtext(f"{PROFILE_NS}type") == "SHM"]
    assert shm == [ET.tostring(d) for d in multi.values() if d.findtext(f"{PROFILE_NS}type") == "SHM"]


def fastdds_schema() -> Path | None:
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep))]
    found = [Path(p) / "share" / "fastdds" / "fastdds_profiles.xsd" for p in prefixes]
    return next((path for path in found if path.is_file()), None)


@pytest.mark.parametrize("name", ["fastdds_shm.xml", "fastdds_multi_host.xml"])
def test_shipped_profiles_follow_the_fastdds_schema(name: str) -> None:
    """Fast DDS ignores unknown elements with a log line only: a misspelt allowlist would confine nothing."""
    etree = pytest.importorskip("lxml.etree", reason="lxml is not installed (pip install lxml)")
    schema_path = fastdds_schema()
    if schema_path is None:
        pytest.skip("fastdds_profiles.xsd not found under sys.prefix or AMENT_PREFIX_PATH (it ships with Fast DDS)")
    schema = etree.XMLSchema(etree.parse(str(schema_path)))
    # The schema's namespace is http://www.eprosima.com; Fast DDS reads either, the files use the documented one.
    text = (config_dir() / name).read_bytes().replace(PROFILE_NS[1:-1].encode(), b"http://www.eprosima.com")
    assert schema.validate(etree.ElementTree(etree.fromstring(text))), schema.error_log
    misspelt = text.replace(b"<useBuiltinTransports>", b"<useBuiltinTransport>").replace(
        b"</useBuiltinTransports>", b"</useBuiltinTransport>")
    assert not schema.validate(etree.ElementTree(etree.fromstring(misspelt))), "the schema check can fail"


def test_single_host_is_the_default_and_only_an_explicit_yes_widens_it() -> None:
    single = str(config_dir() / "fastdds_shm.xml")
    multi = str(config_dir() / "fastdds_multi_host.xml")
    for env in ({}, {MULTI_HOST_ENV: "false"}, {MULTI_HOST_ENV: "ture"}, {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}):
        assert dds_environment(env) == {DDS_PROFILE_ENV: single, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                        MULTI_HOST_ENV: "false"}, env
    assert dds_environment({MULTI_HOST_ENV: "true"}) == {
        DDS_PROFILE_ENV: multi, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", MULTI_HOST_ENV: "true"}
    assert dds_environment({MULTI_HOST_ENV: "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "OFF"})[
        "ROS_AUTOMATIC_DISCOVERY_RANGE"] == "OFF", "multi-host keeps a range the user chose (a discovery server)"
    assert "single-host" in dds_notice({}) and "multi-host" in dds_notice({MULTI_HOST_ENV: "true"})
    assert "your own profile" in dds_notice({DDS_PROFILE_ENV: "/etc/lab.xml"})
    env = {MULTI_HOST_ENV: "no"}
    assert apply_dds_profile(env) == single and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


# -- SROS2: asked-for security must hold or nothing starts ----------------------------------------

def test_security_not_asked_for_is_no_problem() -> None:
    assert security_problem({}) is None
    assert security_problem({"ROS_SECURITY_ENABLE": "false", "ROS_SECURITY_KEYSTORE": "/nowhere"}) is None


def test_security_that_would_run_open_is_refused(tmp_path: Path) -> None:
    (tmp_path / "enclaves").mkdir()
    good = security_environment(str(tmp_path))
    assert good == {"ROS_SECURITY_KEYSTORE": str(tmp_path), "ROS_SECURITY_ENABLE": "true",
                    "ROS_SECURITY_STRATEGY": "Enforce"}
    assert security_problem(good) is None
    assert "exactly 'true'" in security_problem({**good, "ROS_SECURITY_ENABLE": "True"})
    assert "Enforce" in security_problem({**good, "ROS_SECURITY_STRATEGY": "Permissive"})
    assert "Enforce" in security_problem({k: v for k, v in good.items() if k != "ROS_SECURITY_STRATEGY"})
    assert "create_keystore" in security_problem({**good, "ROS_SECURITY_KEYSTORE": str(tmp_path / "none")})
    (tmp_path / "enclaves" / "qwen_vla" / "policy_node").mkdir(parents=True)
    assert missing_enclaves(str(tmp_path), [enclave_name("policy_node"), enclave_name("sim_node")]) == [
        "/qwen_vla/sim_node"]


def test_a_sourced_distribution_names_the_profile_variable_its_fast_dds_reads() -> None:
    from qwen_vla_ros.ros_env import FASTDDS_PROFILE_ENV, FASTRTPS_PROFILE_ENV, profile_variable

    assert profile_variable({"ROS_DISTRO": "jazzy"}) == FASTRTPS_PROFILE_ENV == "FASTRTPS_DEFAULT_PROFILES_FILE"
    assert profile_variable({"ROS_DISTRO": "humble"}) == FASTRTPS_PROFILE_ENV
    assert profile_variable({"ROS_DISTRO": "kilted"}) == FASTDDS_PROFILE_ENV == "FASTDDS_DEFAULT_PROFILES_FILE"


@pytest.mark.ros
def test_this_interpreters_fast_dds_reads_the_profile_the_runtime_sets(tmp_path: Path) -> None:
    """The variable is judged by Fast DDS itself: a broken profile of the user's own, passed the way every
    node gets its profile (with_dds_profile), must make this interpreter's Fast DDS report a parse error.
    Under Jazzy's Fast DDS 2 the FASTDDS_ name alone was silently ignored (default transports)."""
    pytest.importorskip("rclpy", reason="rclpy is not installed: pip install '.[ros-wheels]' or source ROS 2")
    import subprocess

    broken = tmp_path / "lab_profile.xml"
    broken.write_text("<profiles><not-closed")
    env = with_dds_profile({k: v for k, v in os.environ.items() if not k.endswith("_DEFAULT_PROFILES_FILE")}
                           | {DDS_PROFILE_ENV: str(broken), "ROS_DOMAIN_ID": "231"})
    probe = "import rclpy; rclpy.init(); rclpy.create_node('profile_probe'); rclpy.shutdown()"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert str(broken) in result.stdout + result.stderr, (
        f"Fast DDS never read {DDS_PROFILE_ENV}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
