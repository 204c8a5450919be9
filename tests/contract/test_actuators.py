"""Every actuator plugin passes the same contract (python-can's back-to-back style): lock and
unlock do what they say and report it, an action a plugin does not do is an ActuatorError, a
broken device is an ActuatorError (never a driver's own exception), bad options a ConfigError."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from core.errors import ActuatorError, ConfigError
from edge.actuators import ACTUATORS, Actuator, create_actuator

# A body controller's door command, as a manufacturer's DBC would declare it (test fixture).
DOORS_DBC = """VERSION ""

BU_: TCU BCM

BO_ 1312 BCM_DoorCmd: 8 TCU
 SG_ DoorLockReq : 0|2@1+ (1,0) [0|3] "" BCM
 SG_ DoorCmdCounter : 8|4@1+ (1,0) [0|15] "" BCM
 SG_ DoorCmdSource : 12|4@1+ (1,0) [0|15] "" BCM

VAL_ 1312 DoorLockReq 0 "None" 1 "Lock" 2 "Unlock" ;
BA_DEF_ SG_ "GenSigStartValue" INT 0 65535;
BA_ "GenSigStartValue" SG_ 1312 DoorCmdSource 5;
"""


def write_dbc(folder: Path) -> Path:
    path = folder / "doors.dbc"
    path.write_text(DOORS_DBC)
    return path


def _virtual(tmp: Path) -> tuple[Actuator, Callable[[str], Any]]:
    act = create_actuator("doors", {"kind": "virtual"})
    return act, lambda action: act.state  # type: ignore[attr-defined]


def _can(tmp: Path) -> tuple[Actuator, Callable[[str], Any]]:
    channel = f"doors-{uuid.uuid4().hex[:8]}"
    act = create_actuator("doors", {
        "kind": "can", "dbc": str(write_dbc(tmp)), "message": "BCM_DoorCmd",
        "lock": {"DoorLockReq": "Lock"}, "unlock": {"DoorLockReq": 2},
        "channel": channel, "interface": "virtual", "repeat": 2, "gap_s": 0.0,
    })  # fmt: skip
    listener = can.Bus(interface="virtual", channel=channel)
    _cleanup.append(listener.shutdown)

    def seen(action: str) -> Any:
        frames = [listener.recv(1.0), listener.recv(1.0)]
        assert all(f is not None and f.arbitration_id == 1312 for f in frames)
        return [bytes(f.data) for f in frames if f is not None]

    return act, seen


def _gpio(tmp: Path) -> tuple[Actuator, Callable[[str], Any]]:
    root = tmp / "gpio"
    for line in (17, 27):  # what the kernel shows after an export
        (root / f"gpio{line}").mkdir(parents=True)
    (root / "export").write_text("")
    act = create_actuator("relay", {
        "kind": "gpio", "lock_line": 17, "unlock_line": 27, "pulse_s": 0.01,
        "backend": "sysfs", "sysfs_root": str(root),
    })  # fmt: skip
    return act, lambda action: {
        n: (
            (root / f"gpio{n}" / "direction").read_text(),
            (root / f"gpio{n}" / "value").read_text(),
        )
        for n in (17, 27)
        if (root / f"gpio{n}" / "value").exists()
    }


_cleanup: list[Callable[[], None]] = []
PLUGINS = {"virtual": _virtual, "can": _can, "gpio": _gpio}


@pytest.fixture(params=sorted(PLUGINS))
def plugin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Actuator, Any]]:
    act, seen = PLUGINS[request.param](tmp_path)
    yield request.param, act, seen
    act.close()
    while _cleanup:
        _cleanup.pop()()


def test_every_registered_kind_is_covered() -> None:
    assert set(ACTUATORS) == set(PLUGINS)


def test_lock_and_unlock_report_what_they_did(plugin: tuple[str, Actuator, Any]) -> None:
    kind, act, seen = plugin
    done = act.act("lock")
    assert done["actuator"] == act.name and done["kind"] == kind
    after_lock = seen("lock")
    act.act("unlock")
    after_unlock = seen("unlock")
    assert act.counters["lock"] == act.counters["unlock"] == 1
    if kind == "virtual":
        assert (after_lock, after_unlock) == ("locked", "unlocked")
    elif kind == "can":
        # DoorLockReq in bits 0-1, DoorCmdSource's DBC start value 5 in bits 12-15
        assert after_lock == [bytes.fromhex("0150000000000000")] * 2
        assert after_unlock == [bytes.fromhex("0250000000000000")] * 2
        assert done["frame"] == "520#0150000000000000" and done["sent"] == 2
    else:
        assert after_lock == {17: ("low", "0")}  # pulsed, then back to inactive
        assert after_unlock == {17: ("low", "0"), 27: ("low", "0")}
        assert done["line"] == 17 and done["backend"] == "sysfs"


def test_an_action_it_does_not_do_is_an_actuator_error(tmp_path: Path) -> None:
    act = create_actuator("boot", {"kind": "virtual", "actions": ["unlock"]})
    with pytest.raises(ActuatorError, match="does not lock"):
        act.act("lock")
    with pytest.raises(ActuatorError):
        act.act("self_destruct")


def test_broken_devices_fail_as_actuator_errors(tmp_path: Path) -> None:
    bad_can = create_actuator("doors", {
        "kind": "can", "dbc": str(write_dbc(tmp_path)), "message": "BCM_DoorCmd",
        "lock": {"DoorLockReq": 1}, "channel": "no-such-can-if", "interface": "socketcan",
    })  # fmt: skip
    with pytest.raises(ActuatorError, match="no-such-can-if"):
        bad_can.act("lock")
    assert bad_can.counters["failed"] == 1
    no_gpio = create_actuator("relay", {"kind": "gpio", "lock_line": 3, "backend": "sysfs",
                                        "sysfs_root": str(tmp_path / "none")})  # fmt: skip
    with pytest.raises(ActuatorError, match="no GPIO interface"):
        no_gpio.act("lock")
    gpiod_missing = create_actuator("relay", {"kind": "gpio", "lock_line": 3, "backend": "gpiod"})
    try:
        import gpiod  # noqa: F401
    except ImportError:
        with pytest.raises(ActuatorError, match="pip install gpiod"):
            gpiod_missing.act("lock")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "'kind' is missing"),
        ({"kind": "teleport"}, "unknown actuator kind"),
        ({"kind": "virtual", "actions": ["open_sunroof"]}, "actions must be"),
        ({"kind": "virtual", "colour": "red"}, "colour"),
        ({"kind": "gpio", "lock_line": -1}, "lock_line"),
        ({"kind": "gpio"}, "actions must be"),
        ({"kind": "can", "message": "BCM_DoorCmd", "channel": "x", "lock": {"Nope": 1}}, "Nope"),
        ({"kind": "can", "message": "Missing", "channel": "x", "lock": {"DoorLockReq": 1}}, "Missing"),
        ({"kind": "can", "message": "BCM_DoorCmd", "channel": "x", "lock": {"DoorLockReq": 9}}, "DoorLockReq"),
    ],
)  # fmt: skip
def test_bad_options_are_config_errors(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    if table.get("kind") == "can":
        table = {**table, "dbc": str(write_dbc(tmp_path))}
    with pytest.raises(ConfigError, match=message):
        create_actuator("x", table)
