"""The console's command channel on the real Mosquitto: malformed acks do not kill its network
thread, and an ack counts only from the car the command went to."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.commands import Ack, encode_ack
from core.topics import device_topic
from dashboards.commands import CommandChannel
from edge.publisher import MqttPublisher

pytestmark = [pytest.mark.security, pytest.mark.integration]

CAR, OTHER = "sec-ack-car", "sec-ack-other"


def _wait(predicate: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_console_survives_malformed_acks_and_keeps_only_the_addressed_cars(
    local_stack: Stack,
) -> None:
    s = local_stack.settings  # type: ignore[attr-defined]
    mqtt = s.mqtt.model_copy(update={"username": "carpulse-console"})
    password = local_stack.secret_file("carpulse-console").read_text().strip()
    channel = CommandChannel(mqtt, Ed25519PrivateKey.generate(), password)
    channel.start()
    pubs = [MqttPublisher(local_device_mqtt(s, d), boot_id="b") for d in (CAR, OTHER)]
    try:
        for p in pubs:
            p.connect(10.0, announce=False)
        car, other = pubs
        cid = channel.send(CAR, "lock", {})
        ack = encode_ack(Ack("accepted", "ok", cid, "lock"))
        # another car answers for this car's command: never shown as this car's answer
        other.publish(device_topic(OTHER, "cmd-ack"), ack)
        # the car itself, malformed: numbers beyond any integer, a list for the id, not JSON
        for bad in (
            {"v": 1, "id": cid, "status": "accepted", "ts_us": 1e400},
            {"v": 1, "id": cid, "status": "accepted", "ts_us": 10**30},
            {"v": 1, "id": [cid], "status": "accepted"},
            {"v": 1, "id": cid, "status": "accepted", "result": [1]},
        ):
            car.publish(device_topic(CAR, "cmd-ack"), json.dumps(bad).encode())
        car.publish(device_topic(CAR, "cmd-ack"), b"\xff\x00 not json")
        for p in pubs:
            p.flush()
        assert _wait(lambda: sum(channel.dropped.values()) >= 6, 10), channel.dropped
        assert channel.ack(cid) is None
        assert channel.dropped.get("wrong_device") == 1
        assert not [r for r in channel.dropped if r.startswith("handler_error")], channel.dropped
        # the network thread is alive: the real answer, and the next command's, arrive
        car.publish(device_topic(CAR, "cmd-ack"), ack)
        got = channel.wait_ack(cid, 10)
        assert got is not None and got.status == "accepted"
        cid2 = channel.send(CAR, "unlock", {})
        car.publish(device_topic(CAR, "cmd-ack"), encode_ack(Ack("refused", "expired", cid2)))
        got2 = channel.wait_ack(cid2, 10)
        assert got2 is not None and got2.reason == "expired"
    finally:
        for p in pubs:
            p.close()
        channel.stop()
