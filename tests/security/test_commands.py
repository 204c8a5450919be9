"""Signed-command attacks over the real Mosquitto (issue #15, item 5): clock rollback replays and
key rotation/revocation, with a device running ``edge.commands.CommandProcessor`` behind its own
certificate and the console account sending, as in production.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carpulse.stack import Stack
from core.commands import Ack, decode_ack
from core.signing import key_id, sign_command
from core.topics import command_topic
from edge.commands import HWM_FILE, Command, CommandProcessor
from tests.security.mqtt_stack import Peer, _device, _service, _wait, mqtt_stack, peers

__all__ = ["mqtt_stack", "peers"]  # fixtures

pytestmark = [pytest.mark.integration, pytest.mark.security]

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Car:
    """A device on the broker whose commands go through a CommandProcessor (swappable: reboot)."""

    peer: Peer
    proc: CommandProcessor
    executed: list[str]

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        ack = self.proc.handle(msg.topic, bytes(msg.payload))
        client.publish(self.proc.ack_topic, ack, qos=1)


def _processor(
    device: str, keys: list[Any], state: Path, clock: Clock, executed: list[str], **kw: Any
) -> CommandProcessor:
    def run(cmd: Command) -> dict[str, Any]:
        executed.append(cmd.id)
        return {"done": cmd.name}

    return CommandProcessor(
        device, keys, {"lock", "unlock"}, state, {"lock": run, "unlock": run}, clock=clock, **kw
    )


@pytest.fixture
def console(mqtt_stack: Stack, peers: list[Peer]) -> Peer:
    c = _service(mqtt_stack, "carpulse-console")
    peers.append(c)
    assert c.subscribe("carpulse/v1/+/cmd-ack") == 1
    return c


def _car(stack: Stack, peers: list[Peer], device: str, proc: CommandProcessor) -> Car:
    peer = _device(stack, device)
    peers.append(peer)
    car = Car(peer, proc, [])
    peer.client.on_message = car.on_message
    assert peer.subscribe(f"carpulse/v1/{device}/cmd/+") == 1
    return car


def _send(console: Peer, device: str, name: str, payload: bytes, cid: str) -> Ack:
    """Publish through the broker and wait for the car's ack of command ``cid``."""
    console.publish(command_topic(device, name), payload)

    def ack() -> Ack | None:
        for _t, p, _r in console.got:
            a = decode_ack(p)
            if a.id == cid:
                return a
        return None

    assert _wait(lambda: ack() is not None), f"no ack for {cid}"
    got = ack()
    assert got is not None
    console.got.clear()
    return got


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_captured_command_is_not_replayed_after_the_device_clock_moves_back(
    mqtt_stack: Stack, peers: list[Peer], console: Peer, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    dev, state = "sec-cmd-rollback", tmp_path / "state"
    clock, executed = Clock(T0), list[str]()
    car = _car(mqtt_stack, peers, dev, _processor(dev, [key.public_key()], state, clock, executed))
    captured = sign_command(key, dev, "unlock", {}, 60, now=T0, command_id="captured")
    assert _send(console, dev, "unlock", captured, "captured").status == "accepted"
    clock.t = T0 + 3600  # an hour later: the captured command expired long ago
    later = sign_command(key, dev, "lock", {}, 60, now=T0 + 3600, command_id="later")
    assert _send(console, dev, "lock", later, "later").status == "accepted"
    assert (state / HWM_FILE).exists()

    # The car reboots with its RTC reset to a minute after the captured command was issued.
    clock.t = T0 + 30
    car.proc = _processor(dev, [key.public_key()], state, clock, executed)
    ack = _send(console, dev, "unlock", captured, "captured")
    assert (ack.status, ack.reason) == ("refused", "expired")
    assert "clock is behind" in ack.detail
    ack = _send(console, dev, "lock", later, "later")  # still within its ttl for the mark
    assert (ack.status, ack.reason) == ("refused", "replayed")
    # Legitimate traffic still flows: a fresh command (issued after the mark) is accepted.
    fresh = sign_command(key, dev, "lock", {}, 60, now=T0 + 3620, command_id="fresh")
    assert _send(console, dev, "lock", fresh, "fresh").status == "accepted"
    assert executed == ["captured", "later", "fresh"]

    # Control: a device without the persisted mark would have run the captured command again.
    blank, blank_run = tmp_path / "blank", list[str]()
    car.proc = _processor(dev, [key.public_key()], blank, Clock(T0 + 3600), blank_run)
    assert _send(console, dev, "lock", later, "later").status == "accepted"
    (blank / HWM_FILE).unlink()
    car.proc = _processor(dev, [key.public_key()], blank, Clock(T0 + 30), blank_run)
    assert _send(console, dev, "unlock", captured, "captured").status == "accepted"


def test_signing_keys_rotate_and_are_revoked_without_reflashing(
    mqtt_stack: Stack, peers: list[Peer], console: Peer, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    dev, clock, executed = "sec-cmd-keys", Clock(T0), list[str]()
    old, new, stranger = key, Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    proc = _processor(dev, [old.public_key()], tmp_path / "s", clock, executed)
    _car(mqtt_stack, peers, dev, proc)

    def send(signer: Ed25519PrivateKey, cid: str) -> Ack:
        clock.t += 1
        payload = sign_command(signer, dev, "lock", {}, 60, now=clock.t, command_id=cid)
        return _send(console, dev, "lock", payload, cid)

    assert send(old, "c1").status == "accepted"
    assert send(new, "c2").reason == "unknown_key"  # not provisioned yet
    # Rotation, step 1: the device learns the next key (config + reload_config, no reflash).
    proc.set_keys([old.public_key(), new.public_key()])
    assert send(old, "c3").status == "accepted"
    assert send(new, "c4").status == "accepted"
    # Step 2: the old key is revoked by id (say it leaked).
    proc.set_keys([old.public_key(), new.public_key()], revoked_key_ids=[key_id(old)])
    leaked = send(old, "c5")
    assert (leaked.status, leaked.reason) == ("refused", "revoked_key")
    assert key_id(old) in leaked.detail
    assert send(stranger, "c6").reason == "unknown_key"
    assert send(new, "c7").status == "accepted"  # the fleet keeps working on the new key
    assert executed == ["c1", "c3", "c4", "c7"]


def test_agent_reload_config_rotates_and_revokes_keys(tmp_path: Path) -> None:
    """The agent's own wiring: ``reload_config`` (signed by a trusted key) re-reads the trusted
    keys and the revoked ids from its config file, so no reflash is needed."""
    from types import SimpleNamespace

    from core.signing import generate_keypair, load_private_key
    from edge.headunit import HeadUnitSimulator
    from edge.wiring import attach_commands

    priv_a, pub_a = generate_keypair(tmp_path / "a")
    priv_b, pub_b = generate_keypair(tmp_path / "b")
    a, b = load_private_key(priv_a), load_private_key(priv_b)
    dev, acks = "sec-cmd-agent", []
    agent = SimpleNamespace(
        device_id=dev,
        state_dir=tmp_path / "state",
        campaigns=SimpleNamespace(apply=lambda c: {"ok": True, "name": "x"}),
        pub=SimpleNamespace(subscriptions=[], on_message=None),
        seq=SimpleNamespace(next=lambda: 1, boot_id="b"),
        queue=SimpleNamespace(put=lambda kind, topic, ack, **kw: acks.append(decode_ack(ack))),
        sources=[],
        tick_hooks=[],
        stop_hooks=[],
        commands=None,
    )
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge.commands]\npublic_key = "{pub_a}"\n')
    head_unit = HeadUnitSimulator(tmp_path / "hu.sock").start()
    hu_table = {"socket": str(tmp_path / "hu.sock")}
    attach_commands(agent, {"commands": {"public_key": str(pub_a)}, "head_unit": hu_table}, config)

    def send(signer: Ed25519PrivateKey, name: str, args: dict[str, Any]) -> Ack:
        agent.pub.on_message(command_topic(dev, name), sign_command(signer, dev, name, args, 60))
        for tick in agent.tick_hooks:
            tick()
        return acks[-1]

    nav = {"address": "1 Rue de Rivoli"}
    assert send(a, "navigate", nav).status == "accepted"
    assert send(b, "navigate", nav).reason == "unknown_key"
    # Ship key B and revoke key A in the config file, then a signed reload_config (by A).
    config.write_text(
        f'[edge.commands]\npublic_key = "{pub_a}"\npublic_keys = ["{pub_b}"]\n'
        f'revoked_key_ids = ["{key_id(a)}"]\n'
    )
    reload = send(a, "reload_config", {})
    assert reload.status == "accepted" and reload.result["trusted_keys"] == [key_id(b)]
    assert send(a, "navigate", nav).reason == "revoked_key"
    assert send(b, "navigate", nav).status == "accepted"
    head_unit.close()
    assert len(head_unit.received) == 2  # the two accepted navigations, nothing else ran


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert _wait(lambda: threading.active_count() <= before + 1, 10)
