"""Property-based: hostile input through the bridge's routing, the stream's per-record handling,
the crash-alert path, the CRM's record handling and the console's ack handler. Every input ends
forwarded or dead-lettered with a reason that a check gave (never ``internal_error``), and no
exception escapes."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from core.config import MqttSettings, StreamSettings
from core.errors import DecodeError
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_BY_CHANNEL,
    KAFKA_DEADLETTER,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    device_topic,
)
from core.wire import Event, encode_event
from crm import store as cst
from crm.agents import dead_letter_of, handle_record
from crm.engine import RuleEngine
from crm.migrate import upgrade
from crm.rules import shipped_rules
from crm.schema import Vehicle
from dashboards.commands import CommandChannel
from stream.alerts import handle_event
from stream.bridge import route
from stream.pipeline import TelemetryPipeline
from stream.registry import DeviceRegistry
from tests.security import hostile

pytestmark = pytest.mark.security

VIN = "LSVAA4182E2123456"
REG = DeviceRegistry({"car-1": VIN, "car-2": "LSVAA4182E2654321"}, gates=frozenset({"gate-1"}))
MIB = 1024 * 1024
CHECKED = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(CHECKED, max_examples=150)


def examples(*cases: dict[str, Any]) -> Any:
    """The issue's own examples, run before the random ones."""

    def deco(fn: Any) -> Any:
        for case in cases:
            fn = example(**case)(fn)
        return fn

    return deco


def _internal(reason: str | bytes) -> bool:
    r = reason.decode() if isinstance(reason, bytes) else reason
    return r.startswith(("internal_error", "crm_error", "handler_error"))


any_payload = st.one_of(hostile.telemetry_payloads(), hostile.events(), st.binary(max_size=32))


@given(
    device=st.sampled_from([*hostile.DEVICES, "a/b", "+", ""]),
    channel=st.sampled_from(["telemetry", "events", "status", "cmd-ack", "cmd/lock", "x"]),
    payload=any_payload,
)
@examples(
    *({"device": "car-1", "channel": "telemetry", "payload": p} for p in hostile.ISSUE_TELEMETRY),
    *({"device": "car-1", "channel": "events", "payload": p} for p in hostile.ISSUE_EVENTS),
    *({"device": "car-1", "channel": "telemetry", "payload": p} for p in hostile.bombs()),
)
@CHECKED
def test_bridge_routes_every_message_forward_or_dead_letter(
    device: str, channel: str, payload: bytes
) -> None:
    topic = f"carpulse/v1/{device}/{channel}"
    r = route(topic, payload, MIB)
    if r.reason is None:
        assert r.kafka_topic in KAFKA_BY_CHANNEL.values() and r.payload is payload
        assert r.key == device.encode()
    else:
        assert r.kafka_topic == KAFKA_DEADLETTER and not _internal(r.reason), r
        assert len(r.payload) <= 64 * 1024
        assert dict(r.headers(topic))["reason"] == r.reason.encode()


def test_bridge_refuses_the_issue_examples() -> None:
    topic = device_topic("car-1", "telemetry")
    huge_ts = json.dumps({"schema": 1, "device_id": "car-1", "boot_id": "b", "seq": 1,
                          "samples": [{"name": "Vehicle.Speed", "ts_us": 10**30, "value": 1.0}]})  # fmt: skip
    huge_seq = huge_ts.replace('"seq": 1', f'"seq": {2**64 - 1}').replace(str(10**30), "5")
    list_boot = huge_seq.replace(str(2**64 - 1), "1").replace('"b"', '["b"]')
    reasons = [route(topic, p.encode(), MIB).reason for p in (huge_ts, huge_seq, list_boot)]
    assert reasons == ["bad_timestamp", "bad_seq", "bad_boot_id"]
    for bomb in hostile.bombs():
        assert len(bomb) < 20_000  # small on the wire...
        assert route(topic, bomb, MIB).reason in ("bad_compression", "bad_counts", "bad_msgpack")
    assert route(topic, b"{" + b" " * (2 * MIB), MIB).reason == "too_large"
    status = device_topic("car-1", "status")
    assert route(status, b'{"state": "online", "boot_id": "b", "ts_us": 1}', MIB).reason is None
    for bad, reason in (
        (b'{"state": "online", "boot_id": ["b"]}', "bad_boot_id"),
        (b'{"state": "online", "ts_us": 100000000000000000000000000000}', "bad_timestamp"),
        (b'{"state": ["online"]}', "bad_status"),
        (b"", "bad_status"),
    ):
        assert route(status, bad, MIB).reason == reason
    ack = device_topic("car-1", "cmd-ack")
    assert route(ack, b'{"v": 1, "id": "x", "status": "accepted"}', MIB).reason is None
    assert route(ack, b'{"v": 1, "id": "x", "status": "accepted", "ts_us": 1e400}', MIB).reason


class Tables:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}

    def lookup(self, table: str, key: str) -> bytes | None:
        return self.data.get((table, key))


@pytest.fixture(scope="module")
def pipeline() -> tuple[TelemetryPipeline, Tables]:
    return TelemetryPipeline(StreamSettings(), REG), Tables()


@given(payloads=st.lists(hostile.telemetry_payloads(), min_size=1, max_size=4))
@examples({"payloads": hostile.ISSUE_TELEMETRY}, {"payloads": list(hostile.bombs())})
@SLOW
def test_stream_pipeline_forwards_or_dead_letters_each_record(
    pipeline: tuple[TelemetryPipeline, Tables], payloads: list[bytes]
) -> None:
    pipe, tables = pipeline
    c = pipe.counters
    before = (c.records, c.accepted, c.duplicates)
    res = pipe.process([(i % 2, p) for i, p in enumerate(payloads)], tables.lookup)
    for _partition, table, key, value in res.writes:
        tables.data[(table, key)] = value
    dead = [h for v, h in res.dead if any(v is p for p in payloads)]
    assert not [h for _, h in res.dead if _internal(h["reason"])], res.dead
    assert c.records - before[0] == len(payloads)
    assert (c.accepted - before[1]) + (c.duplicates - before[2]) + len(dead) == len(payloads)
    for line in res.lines:  # what reaches InfluxDB is plain line protocol
        assert "\n" not in line
    for _vin, blob in res.state_updates:
        json.loads(blob, parse_constant=_no_constant)  # strict JSON for the dashboards


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in a record for other consumers")


@given(payload=st.one_of(hostile.events(), st.binary(max_size=40)))
@examples(*({"payload": p} for p in hostile.ISSUE_EVENTS))
@CHECKED
def test_alert_path_forwards_or_dead_letters_each_event(payload: bytes) -> None:
    tables: dict[tuple[str, str], bytes] = {}
    res = handle_event(payload, REG, lambda t, k: tables.get((t, k)), 1_800_000_000_000_000)
    if res.dead is not None:
        assert not _internal(res.dead[1]["reason"]), res.dead
        assert res.alert is None and res.state_update is None and not res.writes
        return
    ev = _decoded(payload)
    if ev.kind.startswith("gate."):
        assert ev.device_id == "gate-1"  # only the registered gate
    if res.alert is not None:
        json.loads(res.alert[1], parse_constant=_no_constant)
    if ev.kind == "dtc":
        (written,) = [v for t, k, v in res.writes if k.endswith("|dtc")]
        codes = json.loads(written)
        assert len(codes) <= 64 and all(len(c) == 5 for c in codes)


def _decoded(payload: bytes) -> Event:
    from core.wire import decode_event

    return decode_event(payload)


def test_gate_events_from_a_car_are_refused_by_the_stream() -> None:
    plate = Event("car-1", "b", 1, "gate.plate", 1, 3, {"plate": "沪A12345"})
    res = handle_event(encode_event(plate), REG, lambda t, k: None, 0)
    assert res.dead is not None and res.dead[1]["reason"] == b"not_a_gate"
    ok = handle_event(encode_event(plate.__class__(**{**_fields(plate), "device_id": "gate-1"})),
                      REG, lambda t, k: None, 0)  # fmt: skip
    assert ok.dead is None and ok.writes  # the gate's own event is deduplicated, not refused


def _fields(ev: Event) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in ev.__slots__}  # type: ignore[attr-defined]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def crm_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[cst.CrmStore]:
    """The CRM's own store: SQLite, and a new database on the real PostgreSQL (NUL bytes,
    lengths and JSON are refused there and not by SQLite)."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("crm") / "crm.sqlite"
        engine = cst.make_engine(f"sqlite:///{path}")
    else:
        base = request.getfixturevalue("postgres_url")
        name = "sec_" + uuid.uuid4().hex[:10]
        admin = cst.make_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        engine = cst.make_engine(base.rsplit("/", 1)[0] + "/" + name)
    upgrade(engine)
    store = cst.CrmStore(engine)
    with store.tx() as s:
        s.add(Vehicle(vin=VIN, model="Lavida", device_id="car-1"))
    yield store
    engine.dispose()


@given(
    record=st.one_of(
        st.tuples(st.just(KAFKA_PREDICTIONS), hostile.json_records("service_due")),
        st.tuples(st.just(KAFKA_ALERTS), hostile.json_records("crash")),
        st.tuples(st.just(KAFKA_ANOMALIES), hostile.json_records("anomaly")),
        st.tuples(st.just(KAFKA_EVENTS), hostile.events()),
        st.tuples(
            st.sampled_from([KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_ANOMALIES]),
            st.binary(max_size=40),
        ),
    )
)
@examples(
    *({"record": (KAFKA_EVENTS, p)} for p in hostile.ISSUE_EVENTS),
    *(
        {"record": (KAFKA_PREDICTIONS, hostile.json_prediction(**f))}
        for f in hostile.BAD_PREDICTIONS
    ),
    *({"record": (KAFKA_ALERTS, hostile.json_alert(**f))} for f in hostile.BAD_ALERTS),
)
@SLOW
def test_crm_record_handling_forwards_or_dead_letters(
    crm_store: cst.CrmStore, record: tuple[str, bytes]
) -> None:
    topic, payload = record
    stats: Counter[str] = Counter()
    engine = RuleEngine(shipped_rules())
    try:
        events = handle_record(crm_store, engine, topic, payload, stats, gates={"gate-1"})
    except Exception as err:  # what the agent dead-letters: only what a check refused
        assert isinstance(err, DecodeError), repr(err)
        value, headers = dead_letter_of(topic, payload, err)
        assert value == payload and headers["reason"] and not _internal(headers["reason"])
        return
    assert stats["records"] == 1 and stats["events"] == len(events)
    for ev in events:
        if ev.kind == "gate_arrival":
            assert ev.id.startswith("gate-1:")


ACK_ID = "a" * 32


@pytest.fixture(scope="module")
def channel() -> CommandChannel:
    ch = CommandChannel(MqttSettings(), Ed25519PrivateKey.generate(), None)
    ch.sent[ACK_ID] = "car-1"
    return ch


ACK_HOSTILE: dict[str, list[Any]] = {
    "v": [2, "1", [1], None],
    "id": [["x"], 5, {"a": 1}, "x" * 65, "a\n", None],
    "name": [["lock"], 5, "x" * 100_000],
    "status": [["accepted"], {"accepted": 1}, 5, None],
    "reason": [["ok"], 5, "x" * 100_000],
    "detail": [["x"], {"x": 1}, "x" * 100_000],
    "ts_us": [10**30, 2**64 - 1, float("inf"), float("nan"), "5", [5], 1e400],
    "result": [[], "x", 5, {"a": float("nan")}, {"a": 10**30}],
}


def _ack_doc(draw: Any) -> Any:
    doc: dict[str, Any] = {"v": 1, "id": ACK_ID, "name": "lock", "status": "accepted",
                           "reason": "ok", "detail": "", "ts_us": 5, "result": {}}  # fmt: skip
    for key in draw(st.sets(st.sampled_from(sorted(doc)), max_size=2)):
        doc[key] = draw(st.one_of(st.sampled_from(ACK_HOSTILE[key]), hostile.values(False)))
    return json.dumps(doc).encode()


CAR1_ACK = device_topic("car-1", "cmd-ack")


def _ack_json(key: str, value: Any) -> bytes:
    return json.dumps({"v": 1, "id": ACK_ID, "status": "accepted", key: value}).encode()


@given(
    topic=st.one_of(
        st.sampled_from([CAR1_ACK] * 4 + [device_topic(d, "cmd-ack") for d in hostile.DEVICES]),
        st.sampled_from(["carpulse/v1/car-1/telemetry", "x", "", "carpulse/v1/../cmd-ack"]),
        hostile.values(),
    ),
    payload=st.one_of(st.composite(_ack_doc)(), st.binary(max_size=40), hostile.values()),
)
@examples(
    *({"topic": CAR1_ACK, "payload": _ack_json(k, v)} for k, vs in ACK_HOSTILE.items() for v in vs),
)
@CHECKED
def test_ack_handler_keeps_only_the_addressed_devices_acks_and_never_raises(
    channel: CommandChannel, topic: Any, payload: Any
) -> None:
    channel.acks.clear()
    outcome = channel.on_ack(topic, payload)
    assert not _internal(outcome), outcome
    if outcome == "kept":
        assert topic == device_topic("car-1", "cmd-ack") and ACK_ID in channel.acks
    else:
        assert ACK_ID not in channel.acks


def test_ack_handler_survives_on_pahos_thread(channel: CommandChannel) -> None:
    """paho calls ``_on_message`` with an ``MQTTMessage``: a bad one must not raise there."""

    def msg(topic: bytes, payload: bytes) -> paho.MQTTMessage:
        m = paho.MQTTMessage(topic=topic)
        m.payload = payload
        return m

    channel.acks.clear()
    good = json.dumps({"v": 1, "id": ACK_ID, "status": "accepted", "reason": "ok"}).encode()
    bad = [
        (
            b"carpulse/v1/car-1/cmd-ack",
            b'{"v": 1, "id": "' + ACK_ID.encode() + b'", "status": "accepted", "ts_us": 1e400}',
        ),
        (b"carpulse/v1/car-1/cmd-ack", b'{"v": 1, "id": ["x"], "status": "accepted"}'),
        (b"carpulse/v1/\xff\xfe/cmd-ack", good),  # not UTF-8
        (b"carpulse/v1/car-2/cmd-ack", good),  # another car answering for car-1's command
    ]
    for topic, payload in bad:
        channel._on_message(None, None, msg(topic, payload))
    assert channel.acks == {}
    assert channel.dropped.get("wrong_device", 0) >= 1
    channel._on_message(None, None, msg(b"carpulse/v1/car-1/cmd-ack", good))
    assert channel.ack(ACK_ID) is not None and channel.ack(ACK_ID).status == "accepted"  # type: ignore[union-attr]


@given(payload=any_payload)
@examples(*({"payload": p} for p in (*hostile.ISSUE_TELEMETRY, *hostile.bombs())))
@CHECKED
def test_the_bridges_envelope_check_refuses_exactly_what_decoding_refuses(payload: bytes) -> None:
    """The bridge forwards the bytes without rebuilding the sample columns (issue 22): what it
    lets through must decode in the worker, and what it refuses gets decode's own reason."""
    from core.errors import WireError
    from core.wire import decode_telemetry, telemetry_device

    try:
        device = telemetry_device(payload)
    except WireError as err:
        with pytest.raises(WireError) as full:
            decode_telemetry(payload)
        assert full.value.reason == err.reason
        return
    assert decode_telemetry(payload).device_id == device


def test_the_worker_refuses_a_body_that_names_another_device_than_its_key(
    pipeline: tuple[TelemetryPipeline, Tables],
) -> None:
    from core.wire import Samples, TelemetryBatch, encode_telemetry

    pipe, tables = pipeline
    rows = Samples.from_records([("Vehicle.Speed", 1_700_000_000_000_000, 1.0)])
    own = encode_telemetry(TelemetryBatch("car-1", "boot-k", 1, rows))
    res = pipe.process([(0, own, b"car-2"), (0, own, b"car-1")], tables.lookup)
    assert [h["reason"] for _, h in res.dead] == [b"device_mismatch"]
    # the same bytes under their own key go on (the module's pipeline may add summaries of
    # earlier examples' trips and days beside it)
    assert [x for x in res.lines if x.startswith("telemetry,")] == [
        "telemetry,device=car-1 Vehicle.Speed=1.0 1700000000000000"
    ]
