"""Signed commands: forged, tampered, expired, replayed, unknown and unlisted ones are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from core.commands import (
    ALG_ED25519,
    Ack,
    b64d,
    b64e,
    decode_ack,
    new_body,
    pack_command,
    signing_input,
    unpack_command,
)
from core.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_command,
)
from core.topics import command_topic
from edge.commands import NONCE_FILE, Command, CommandProcessor, NonceStore

DEV = "car-cmd-1"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    priv, pub = generate_keypair(tmp_path / "pki")
    return load_private_key(priv), pub


def _proc(
    pub: Path, state: Path, clock: Clock, calls: list[Command] | None = None, **kw: Any
) -> CommandProcessor:
    calls = [] if calls is None else calls

    def record(cmd: Command) -> dict[str, Any]:
        calls.append(cmd)
        return {"done": cmd.name}

    def broken(cmd: Command) -> None:
        raise RuntimeError("door actuator not answering")

    handlers = {n: record for n in ("lock", "unlock", "navigate", "clear_dtcs", "read_dtcs")}
    handlers["reload_config"] = broken
    allow = kw.pop("allowlist", {"lock", "unlock", "navigate", "clear_dtcs", "reload_config"})
    return CommandProcessor(DEV, load_public_key(pub), allow, state, handlers, clock=clock, **kw)


def _send(proc: CommandProcessor, name: str, payload: bytes) -> Ack:
    ack = decode_ack(proc.handle(command_topic(DEV, name), payload))
    return ack


def test_valid_command_is_accepted_once_and_handler_sees_args(keys, tmp_path) -> None:
    key, pub = keys
    clock, calls = Clock(), []
    proc = _proc(pub, tmp_path / "state", clock, calls)
    payload = sign_command(key, DEV, "navigate", {"address": "1 Rue de Rivoli, Paris"}, 60, now=T0)
    ack = _send(proc, "navigate", payload)
    assert (ack.status, ack.reason) == ("accepted", "ok")
    assert ack.result == {"done": "navigate"}
    assert ack.id == unpack_command(payload).body.id
    assert [c.args for c in calls] == [{"address": "1 Rue de Rivoli, Paris"}]
    again = _send(proc, "navigate", payload)
    assert (again.status, again.reason) == ("refused", "replayed")
    assert len(calls) == 1


def test_replay_after_restart_is_refused(keys, tmp_path) -> None:
    key, pub = keys
    clock = Clock()
    payload = sign_command(key, DEV, "lock", {}, 300, now=T0)
    assert _send(_proc(pub, tmp_path / "s", clock), "lock", payload).status == "accepted"
    clock.t += 10
    restarted = _proc(pub, tmp_path / "s", clock)  # a new process, same state dir
    assert _send(restarted, "lock", payload).reason == "replayed"
    assert (tmp_path / "s" / NONCE_FILE).exists()


def test_forged_and_tampered_commands_are_refused(keys, tmp_path) -> None:
    key, pub = keys
    proc = _proc(pub, tmp_path / "s", Clock())
    other = Ed25519PrivateKey.generate()
    forged = sign_command(other, DEV, "unlock", {}, 60, now=T0)
    assert _send(proc, "unlock", forged).reason == "unknown_key"  # its own key id: not trusted
    # The same forgery claiming the device's trusted key id fails on the signature.
    body = new_body(DEV, "unlock", {}, 60, "ab" * 16, "forged1", T0, key_id(key))
    claimed = pack_command(ALG_ED25519, body.to_json(), other.sign(signing_input(body.to_json())))
    assert _send(proc, "unlock", claimed).reason == "bad_signature"
    # Tamper with the body but keep the genuine signature.
    doc = json.loads(sign_command(key, DEV, "navigate", {"lat": 48.8, "lon": 2.3}, 60, now=T0))
    body = json.loads(b64d(doc["body"], "body"))
    body["args"]["lat"] = 10.0
    doc["body"] = b64e(json.dumps(body).encode())
    assert _send(proc, "navigate", json.dumps(doc).encode()).reason == "bad_signature"
    # Strip the signature.
    doc = json.loads(sign_command(key, DEV, "lock", {}, 60, now=T0))
    del doc["sig"]
    ack = _send(proc, "lock", json.dumps(doc).encode())
    assert (ack.status, ack.reason) == ("refused", "unsigned")
    assert ack.id == json.loads(b64d(doc["body"], "body"))["id"]
    # Another algorithm name with the right bytes is still refused (no algorithm confusion).
    doc = json.loads(sign_command(key, DEV, "lock", {}, 60, now=T0))
    doc["alg"] = "none"
    assert _send(proc, "lock", json.dumps(doc).encode()).reason == "bad_signature"
    assert proc.counters["bad_signature"] == 3 and proc.counters["unknown_key"] == 1


def test_time_window(keys, tmp_path) -> None:
    key, pub = keys
    clock = Clock()
    proc = _proc(pub, tmp_path / "s", clock)
    old = sign_command(key, DEV, "lock", {}, 30, now=T0 - 31)
    assert _send(proc, "lock", old).reason == "expired"
    future = sign_command(key, DEV, "lock", {}, 300, now=T0 + 120)
    assert _send(proc, "lock", future).reason == "not_yet_valid"
    skewed = sign_command(key, DEV, "lock", {}, 300, now=T0 + 30)  # within the 60 s skew
    assert _send(proc, "lock", skewed).status == "accepted"
    long = sign_command(key, DEV, "lock", {}, 7 * 86400, now=T0)
    assert _send(proc, "lock", long).reason == "ttl_too_long"


def test_names_devices_topics_and_args(keys, tmp_path) -> None:
    key, pub = keys
    proc = _proc(pub, tmp_path / "s", Clock())
    assert (
        _send(proc, "selfdestruct", sign_command(key, DEV, "selfdestruct", {}, 60, now=T0)).reason
        == "unknown_command"
    )
    # read_dtcs has a handler but is not on this device's allowlist.
    assert (
        _send(proc, "read_dtcs", sign_command(key, DEV, "read_dtcs", {}, 60, now=T0)).reason
        == "not_allowed"
    )
    # Known and allowed nowhere: replace_campaign has no handler here.
    proc2 = _proc(pub, tmp_path / "s2", Clock(), allowlist={"replace_campaign"})
    rc = sign_command(key, DEV, "replace_campaign", {"campaign": {"v": 2}}, 60, now=T0)
    assert _send(proc2, "replace_campaign", rc).reason == "unknown_command"
    other_dev = sign_command(key, "car-cmd-2", "lock", {}, 60, now=T0)
    assert _send(proc, "lock", other_dev).reason == "wrong_device"
    ack = decode_ack(proc.handle(command_topic("car-cmd-2", "lock"), other_dev))
    assert ack.reason == "wrong_device"
    lock = sign_command(key, DEV, "lock", {}, 60, now=T0)
    assert _send(proc, "unlock", lock).reason == "topic_mismatch"
    bad_nav = sign_command(key, DEV, "navigate", {"lat": 123.0, "lon": 2.0}, 60, now=T0)
    assert _send(proc, "navigate", bad_nav).reason == "bad_args"
    no_nav = sign_command(key, DEV, "navigate", {}, 60, now=T0)
    assert _send(proc, "navigate", no_nav).reason == "bad_args"
    # The refused commands above did not consume their nonces... but an accepted one does.
    assert _send(proc, "lock", lock).status == "accepted"


def test_failing_handler_is_acknowledged_as_failed(keys, tmp_path) -> None:
    key, pub = keys
    proc = _proc(pub, tmp_path / "s", Clock())
    ack = _send(proc, "reload_config", sign_command(key, DEV, "reload_config", {}, 60, now=T0))
    assert (ack.status, ack.reason) == ("failed", "handler_failed")
    assert "door actuator not answering" in ack.detail


def test_clear_dtcs_gets_a_one_shot_obd_write_authorisation(keys, tmp_path) -> None:
    base = pytest.importorskip("firmware_bridge.obd.base")
    key, pub = keys
    calls: list[Command] = []
    proc = _proc(pub, tmp_path / "s", Clock(), calls)
    vin = "1FA6P8JZ0G5520001"
    ack = _send(proc, "clear_dtcs", sign_command(key, DEV, "clear_dtcs", {"vin": vin}, 30, now=T0))
    assert ack.status == "accepted"
    auth = calls[0].authorization
    assert isinstance(auth, base.WriteAuthorization)
    assert not auth.permits(b"\x04", "WRONGVIN000000000")  # bound to the VIN it was signed for
    assert not auth.permits(b"\x2e\xf1\x90", vin)  # only mode 04
    assert auth.permits(b"\x04", vin)
    assert not auth.permits(b"\x04", vin)  # used up
    proc.handle(command_topic(DEV, "lock"), sign_command(key, DEV, "lock", {}, 30, now=T0))
    assert calls[-1].authorization is None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'{"v": 1}',
        b'{"v": 2, "body": "", "sig": ""}',
        b'{"v": 1, "body": "!!!", "sig": "AA"}',
        b'{"v": 1, "body": "e30", "sig": "AA"}',
        b"x" * 100_000,
    ],
)
def test_garbage_is_refused_as_malformed(keys, tmp_path, payload: bytes) -> None:
    _, pub = keys
    ack = _send(_proc(pub, tmp_path / "s", Clock()), "lock", payload)
    assert (ack.status, ack.reason, ack.id) == ("refused", "malformed", None)


@settings(max_examples=200, deadline=None)
@given(
    topic=st.one_of(st.just(command_topic(DEV, "lock")), st.text(max_size=60)),
    payload=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["v", "alg", "body", "sig"]),
            st.one_of(st.integers(), st.text(max_size=40), st.none()),
        ).map(lambda d: json.dumps(d).encode()),
    ),
)
def test_handle_never_raises_on_arbitrary_input(tmp_path_factory, topic, payload) -> None:
    pub = generate_keypair(tmp_path_factory.getbasetemp() / "fuzzkeys")[1]
    proc = _proc(pub, tmp_path_factory.getbasetemp() / "fuzzstate", Clock())
    ack = decode_ack(proc.handle(topic, payload))
    assert ack.status == "refused"


def test_nonce_store_survives_torn_lines_and_compacts(tmp_path) -> None:
    path = tmp_path / NONCE_FILE
    store = NonceStore(path)
    for i in range(1500):
        store.add(f"{i:032x}", T0 + (10 if i < 1400 else 1000))
    with open(path, "a") as fh:
        fh.write("deadbeefdeadbeef 18")  # a torn write: no newline, value cut short... still parses
        fh.write("\nnot a nonce line\n")
    reloaded = NonceStore(path)
    assert reloaded.bad_lines == 1
    assert f"{5:032x}" in reloaded and f"{1450:032x}" in reloaded
    reloaded.prune(T0 + 100)  # 1400 expired: the file is rewritten with the live ones only
    assert len(reloaded) == 100
    assert len(path.read_text().splitlines()) == 100
    assert f"{1450:032x}" in NonceStore(path)


def test_key_files_have_safe_modes_and_clear_errors(tmp_path) -> None:
    priv, pub = generate_keypair(tmp_path)
    assert os.stat(priv).st_mode & 0o777 == 0o600
    assert generate_keypair(tmp_path) == (priv, pub)  # idempotent
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cmd-sign\.pub"):
        load_private_key(pub)
    with pytest.raises(ConfigError, match=r"missing\.pub"):
        load_public_key(tmp_path / "missing.pub")
