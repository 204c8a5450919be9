"""The agent's lock/unlock/navigate handlers (edge.wiring) with a virtual actuator and the head-unit
simulator: the ack says what the car did, refused when it cannot, failed when it broke."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.commands import Ack, decode_ack
from core.errors import ConfigError, HeadUnitError
from core.signing import generate_keypair, load_private_key, sign_command
from core.topics import command_topic
from edge.headunit import HeadUnitClient, HeadUnitConfig, HeadUnitSimulator
from edge.wiring import attach_commands

DEV = "act-car-1"


class _Car:
    def __init__(self, tmp: Path, edge_doc: dict[str, Any]) -> None:
        priv, pub = generate_keypair(tmp / "key")
        self.key = load_private_key(priv)
        self.acks: list[Ack] = []
        self.agent = SimpleNamespace(
            device_id=DEV, state_dir=tmp / "state", sources=[], tick_hooks=[], stop_hooks=[],
            pub=SimpleNamespace(subscriptions=[], on_message=None),
            seq=SimpleNamespace(next=lambda: 1, boot_id="b"),
            queue=SimpleNamespace(put=lambda kind, topic, ack, **kw: self.acks.append(decode_ack(ack))),
            commands=None, campaigns=None,
        )  # fmt: skip
        attach_commands(self.agent, {"commands": {"public_key": str(pub)}, **edge_doc}, None)

    def send(self, name: str, args: dict[str, Any] | None = None) -> Ack:
        payload = sign_command(self.key, DEV, name, args or {}, 60)
        self.agent.pub.on_message(command_topic(DEV, name), payload)
        for tick in self.agent.tick_hooks:
            tick()
        return self.acks[-1]


def test_lock_unlock_by_a_virtual_actuator(tmp_path: Path) -> None:
    car = _Car(tmp_path, {"actuators": {"doors": {"kind": "virtual"}}})
    ack = car.send("lock")
    assert (ack.status, ack.reason) == ("accepted", "ok")
    assert ack.detail == "done: lock by doors (virtual)"
    assert ack.result["done"] == [{"actuator": "doors", "kind": "virtual", "state": "locked"}]
    (doors,) = car.agent.actuators
    assert doors.state == "locked"
    assert car.send("unlock").result["done"][0]["state"] == "unlocked"
    assert [a for _, a in doors.history] == ["lock", "unlock"]
    assert car.agent.stop_hooks == [doors.close]


def test_no_actuator_is_refused_and_a_broken_one_failed(tmp_path: Path) -> None:
    car = _Car(tmp_path, {"actuators": {
        "boot": {"kind": "virtual", "actions": ["unlock"], "fail_with": "boot latch jammed"}}})  # fmt: skip
    ack = car.send("lock")
    assert (ack.status, ack.reason) == ("refused", "no_actuator")
    assert "no actuator that can lock" in ack.detail
    ack = car.send("unlock")
    assert (ack.status, ack.reason) == ("failed", "handler_failed")
    assert "boot latch jammed" in ack.detail and "already done: none" in ack.detail
    bare = _Car(tmp_path / "bare", {})
    assert bare.send("unlock").reason == "no_actuator"


def test_navigate_goes_to_the_head_unit(tmp_path: Path) -> None:
    sock = tmp_path / "hu.sock"
    with HeadUnitSimulator(sock) as hu:
        car = _Car(tmp_path, {"head_unit": {"socket": str(sock), "timeout_s": 2}})
        ack = car.send("navigate", {"address": "1 Rue de Rivoli, Paris", "label": "Dealer"})
        assert (ack.status, ack.detail) == ("accepted", "done: head unit route_started")
        assert hu.received == [{"v": 1, "type": "navigate", "id": ack.id,
                                "address": "1 Rue de Rivoli, Paris", "label": "Dealer"}]  # fmt: skip
    gone = car.send("navigate", {"lat": 48.86, "lon": 2.34})  # the head unit is off now
    assert (gone.status, gone.reason) == ("failed", "handler_failed") and "hu.sock" in gone.detail
    bare = _Car(tmp_path / "bare", {})
    assert bare.send("navigate", {"lat": 48.86, "lon": 2.34}).reason == "no_head_unit"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b'{"ok":false,"error":"no map data"}\n', "refused: no map data"),
        (b"\xff\xfe garbage\n", "no JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"x" * 10_000, "longer than"),
        (b"", "no JSON"),
    ],
)
def test_a_hostile_head_unit_is_an_error(tmp_path: Path, reply: bytes, message: str) -> None:
    sock = tmp_path / "hu.sock"
    with HeadUnitSimulator(sock, reply=reply):
        client = HeadUnitClient(HeadUnitConfig(socket=sock, timeout_s=2))
        with pytest.raises(HeadUnitError, match=message):
            client.navigate("c1", {"lat": 1.0, "lon": 2.0})


def test_simulator_refuses_what_is_not_a_destination(tmp_path: Path) -> None:
    with HeadUnitSimulator(tmp_path / "hu.sock") as hu:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "hu.sock"))
            s.sendall(b'{"type":"format_disk"}\n')
            assert json.loads(s.recv(4096)) == {"ok": False, "error": "unknown request"}
        assert hu.received == []


def test_bad_tables_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[edge.actuators.doors\]"):
        _Car(tmp_path, {"actuators": {"doors": {"kind": "virtual", "state": "ajar"}}})
    with pytest.raises(ConfigError, match=r"\[edge.head_unit\]"):
        _Car(tmp_path, {"head_unit": {"sock": "/tmp/x"}})
