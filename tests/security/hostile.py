"""Hypothesis strategies for hostile device input: extreme integers, NaN/inf, huge strings, wrong
types, lists where scalars go, forged wire bodies and decompression bombs."""

from __future__ import annotations

import functools
import json
from typing import Any

import msgpack
import zstandard
from hypothesis import strategies as st

from core.wire import Event, Samples, TelemetryBatch, encode_event, encode_telemetry

# Integers every layer must survive: int64/uint64 edges, beyond both, and the issue's examples.
INT_EXTREMES = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                2**64 - 1, 10**30, -(10**30)]  # fmt: skip
MSGPACK_INTS = [i for i in INT_EXTREMES if -(2**63) <= i <= 2**64 - 1]  # what msgpack can carry
HUGE = ["x" * 200_000, "é" * 5000, "\x00", "car-1\n", "../x", "", "P0301\n"]
SURROGATE = "b\ud800"  # only JSON can carry a lone surrogate (msgpack cannot encode it)

DEVICES = ["car-1", "car-2", "gate-1", "car-x"]  # car-x is in no registry
SENDERS = ["car-1", "car-1", "car-2", "gate-1", "car-x"]  # registered ones drawn most
NAMES = [
    "Vehicle.Speed",
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.Powertrain.CombustionEngine.Speed",
    "Vehicle.OBD.Status.DTCCount",
]

ints = st.one_of(st.sampled_from(INT_EXTREMES), st.integers())
mp_ints = st.one_of(st.sampled_from(MSGPACK_INTS), st.integers(-(2**63), 2**64 - 1))
floats = st.floats(allow_nan=True, allow_infinity=True)
strings = st.one_of(st.text(max_size=12), st.sampled_from(HUGE))


def _scalars(int_st: Any, binary: bool) -> Any:
    parts = [int_st, floats, strings, st.booleans(), st.none()]
    parts.append(st.binary(max_size=16) if binary else st.just(SURROGATE))
    return st.one_of(*parts)


def values(binary: bool = True) -> Any:
    """Any value a hostile sender can put in a field (msgpack-packable when ``binary``); half
    of the draws are the known-bad ones (extreme ints, NaN/inf, huge strings, lists for ids)."""
    leaf = _scalars(mp_ints if binary else ints, binary)
    extremes = (MSGPACK_INTS if binary else INT_EXTREMES) + [
        float("nan"), float("inf"), -float("inf"), 1e308, [], ["b"], [1, 2], {}, None, True,
        HUGE[0], "",
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(extremes),
        st.recursive(
            leaf,
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
            max_leaves=10,
        ),
    )


@st.composite
def batches(draw: Any) -> TelemetryBatch:
    """Valid batches with extreme contents: any int64 time, NaN/inf values, text samples."""
    n = draw(st.integers(0, 12))
    realistic = draw(st.booleans())
    ts_st = (
        st.integers(1_700_000_000_000_000, 1_900_000_000_000_000)
        if realistic
        else st.one_of(st.sampled_from([-(2**63), 2**63 - 1, 0]), st.integers(-(2**63), 2**63 - 1))
    )
    sig = draw(st.lists(st.integers(0, len(NAMES) - 1), min_size=n, max_size=n))
    ts = draw(st.lists(ts_st, min_size=n, max_size=n))
    val = draw(st.lists(floats, min_size=n, max_size=n))
    text = draw(st.lists(st.tuples(st.sampled_from(NAMES), ts_st, strings), max_size=2))
    return TelemetryBatch(
        draw(st.sampled_from(SENDERS)),
        draw(st.text(max_size=8)),
        draw(st.one_of(st.sampled_from([0, 2**63 - 1]), st.integers(0, 2**63 - 1))),
        Samples.from_columns(NAMES, sig, ts, val),
        tuple(text),
    )


def body_of(payload: bytes) -> dict[str, Any]:
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload[5:]), raw=False)
    assert isinstance(body, dict)
    return body


def pack(body: Any) -> bytes:
    return b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(
        msgpack.packb(body, use_bin_type=True)
    )


def _field(key: str) -> Any:
    """Hostile values for one wire field, the ones that break its type drawn most often."""
    by_key: dict[str, list[Any]] = {
        "q": MSGPACK_INTS,  # sequence number: 2**64-1, beyond int64, negative
        "t0": MSGPACK_INTS,
        "tk": [0, 3, 16, 2**64 - 1, [8], "8"],
        "b": [["b"], {"b": 1}, HUGE[0], 5, None],  # boot id: a list where a scalar goes
        "d": [["car-1"], "car-1\n", 5, None, HUGE[0]],
        "c": [[2**63 - 1], [2**64 - 1], [-1], [1.5], [[1]], 2**64 - 1],
        "n": [["Vehicle.Speed\n"], [5], "Vehicle.Speed", [HUGE[0]]],
        "s": [[["Vehicle.Speed", 2**64 - 1, "x"]], [["Vehicle.Speed", 1, HUGE[0]]],
              [["Vehicle.Speed", 1, ["x"]]], [["Vehicle.Speed", 1.5, "x"]], [[1, 1, 1]]],
        "k": ["", "Bad Kind", ["crash"], 5],
        "t": [*MSGPACK_INTS, 1.5, [1]],
        "p": [-1, 256, 2**64 - 1, [0]],
        "x": [[], "x", {"a": float("nan")}, {"a": 2**64 - 1}, {"a": [[[[[[[1]]]]]]]}],
    }  # fmt: skip
    return st.one_of(st.sampled_from(by_key.get(key, [None])), values())


@st.composite
def forged_telemetry(draw: Any) -> bytes:
    """A valid binary batch with one or two fields replaced by hostile values."""
    body = body_of(encode_telemetry(draw(batches())))
    for key in draw(st.sets(st.sampled_from(sorted(body)), min_size=1, max_size=2)):
        body[key] = draw(_field(key))
    return pack(body)


@functools.cache
def bombs() -> tuple[bytes, ...]:
    """Small messages that inflate: a million text samples, 12 MiB of zeros, huge counts."""
    base = body_of(encode_telemetry(TelemetryBatch("car-1", "b", 1, Samples.empty())))
    text = dict(base, s=[["Vehicle.Speed", 1, ""]] * 1_000_000)
    counts = dict(base, n=["Vehicle.Speed"], c=[2**62], t=b"", v=b"")
    return (
        pack(text),
        b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(b"\0" * (12 * 1024 * 1024)),
        pack(counts),
    )


@st.composite
def json_telemetry(draw: Any) -> bytes:
    """The JSON debugging form with hostile fields (ints beyond int64, NaN, wrong types)."""
    row = {
        "name": draw(st.sampled_from(NAMES)),
        "ts_us": draw(st.one_of(st.sampled_from(INT_EXTREMES), ints)),
        "value": draw(values(False)),
    }
    doc: dict[str, Any] = {
        "schema": 1,
        "device_id": draw(st.sampled_from(SENDERS)),
        "boot_id": "b",
        "seq": 1,
        "samples": [row],
    }
    json_keys = {"device_id": "d", "boot_id": "b", "seq": "q"}
    for key in draw(st.sets(st.sampled_from(sorted(doc)), max_size=2)):
        hostile = _field(json_keys.get(key, key)).filter(_json_able)
        doc[key] = draw(st.one_of(hostile, values(False)))
    return json.dumps(doc).encode()


def _json_able(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


KINDS = ["crash", "dtc", "gate.plate", "gate.face", "status", "intrusion", "Bad Kind", ""]


@st.composite
def events(draw: Any) -> bytes:
    """Events of every kind, their data fields valid, hostile or missing."""
    kind = draw(st.sampled_from(KINDS))
    good: dict[str, Any] = {
        "crash": {"peak_g": 6.0, "trigger": "airbag"},
        "dtc": {"codes": ["P0301", "U0100"]},
        "gate.plate": {"plate": "沪A12345", "camera": "gate-1", "confidence": 0.9},
        "gate.face": {"member_id": "m-1", "similarity": 0.8, "camera": "gate-1"},
        "intrusion": {
            "kind": "dos",
            "score": 0.5,
            "flagged": 10,
            "frames": 20,
            "reasons": {"unknown_id": 10},
            "distinct_ids": 1,
            "source": "can",
            "ids": [{"id": "0x000", "extended": False, "known": False, "frames": 10}],
            "vehicle_model": "gt350",
            "follow_up": False,
        },
    }.get(kind, {})
    data = dict(good)
    for key in draw(st.sets(st.sampled_from(sorted(good) or ["x"]), max_size=2)):
        data[key] = draw(values())
    if kind == "dtc" and draw(st.booleans()):
        data["codes"] = draw(
            st.one_of(
                st.lists(
                    st.sampled_from(["P0301", "p0420", "X0000", "P03011", 7, None]), max_size=70
                ),
                st.just(["P0301"] * 100_000),
            )
        )
    ev = Event(
        draw(st.sampled_from(SENDERS)),
        draw(st.one_of(st.just("b"), strings)),
        draw(st.one_of(st.integers(0, 50), st.just(2**63 - 1))),
        kind,
        draw(st.one_of(st.just(1_800_000_000_000_000), st.sampled_from(MSGPACK_INTS))),
        draw(st.one_of(st.just(3), st.sampled_from([0, 255, 256, -1]))),
        data,
    )
    payload = encode_event(ev)
    if draw(st.booleans()):  # forge the body itself: scalars replaced, lists for ids
        body = msgpack.unpackb(payload[4:], raw=False)
        for key in draw(st.sets(st.sampled_from(sorted(body)), min_size=1, max_size=2)):
            body[key] = draw(_field({"q": "q", "b": "b", "d": "d"}.get(key, key)))
        payload = payload[:4] + msgpack.packb(body, use_bin_type=True)
    return payload


def telemetry_payloads() -> Any:
    return st.one_of(
        batches().map(encode_telemetry),
        forged_telemetry(),
        forged_telemetry(),
        json_telemetry(),
        json_telemetry(),
        st.sampled_from(range(3)).map(lambda i: bombs()[i]),
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: b"CPW\x01\x01" + b),
    )


def json_prediction(**fields: Any) -> bytes:
    doc = {"vin": "LSVAA4182E2123456", "kind": "service_due", "ts_us": 1_800_000_000_000_000,
           "days": 12.0, "km": 30000.0, "odo": 29500.0, "cycle": "2025"}  # fmt: skip
    return json.dumps({**doc, **fields}).encode()


def json_alert(**fields: Any) -> bytes:
    doc = {"kind": "crash", "vin": "LSVAA4182E2123456", "device": "car-1",
           "ts_us": 1_800_000_000_000_000, "data": {"trigger": "airbag"},
           "location": {"lat": 31.2, "lon": 121.5}}  # fmt: skip
    return json.dumps({**doc, **fields}).encode()


BAD_PREDICTIONS = [{"days": float("nan")}, {"days": 1e300}, {"ts_us": 10**30}, {"km": "x"},
                   {"vin": ["LSV"]}, {"cycle": ["x"]}, {"ts_us": -1}, {"odo": 10**400}]  # fmt: skip
BAD_ALERTS = [{"location": {"lat": "x", "lon": 1.0}}, {"location": {"lat": float("nan"), "lon": 1}},
              {"location": {"lat": 10**400, "lon": 1}}, {"device": ["car-1"]}, {"vin": 5},
              {"ts_us": 2**64 - 1}, {"location": [1, 2]}, {"data": {"trigger": ["x"]}}]  # fmt: skip


def json_records(kind: str) -> Any:
    """Prediction or crash-alert JSON as the CRM reads it, fields hostile."""

    @st.composite
    def build(draw: Any) -> bytes:
        if kind == "service_due":
            doc: dict[str, Any] = {"vin": "LSVAA4182E2123456", "kind": "service_due",
                                   "ts_us": 1_800_000_000_000_000, "days": 12.0, "km": 30000.0,
                                   "odo": 29500.0, "cycle": "2025"}  # fmt: skip
        elif kind == "anomaly":
            doc = {"vin": "LSVAA4182E2123456", "signal": "Vehicle.Speed",
                   "ts_us": 1_800_000_000_000_000, "value": 250.0, "score": 9.0,
                   "threshold": 6.0, "detector": "robust_zscore",
                   "window": {"ts_us": [1_800_000_000_000_000], "values": [250.0]}}  # fmt: skip
            if draw(st.booleans()):
                doc["window"] = {"ts_us": draw(values(False)), "values": draw(values(False))}
        else:
            doc = {"kind": "crash", "vin": "LSVAA4182E2123456", "device": "car-1",
                   "ts_us": 1_800_000_000_000_000, "data": {"trigger": "airbag"},
                   "location": {"lat": 31.2, "lon": 121.5}}  # fmt: skip
        for key in draw(st.sets(st.sampled_from(sorted(doc)), max_size=3)):
            doc[key] = draw(values(False))
        if kind == "crash" and draw(st.booleans()):
            doc["location"] = {"lat": draw(values(False)), "lon": draw(floats)}
        return json.dumps(doc).encode()

    return build()


def forge_telemetry(**fields: Any) -> bytes:
    """A one-sample batch of ``car-1`` with wire fields replaced (``q=2**64 - 1``...)."""
    batch = TelemetryBatch(
        "car-1", "b", 1, Samples.from_records([("Vehicle.Speed", 1_800_000_000_000_000, 1.0)])
    )
    return pack({**body_of(encode_telemetry(batch)), **fields})


def forge_event(kind: str = "crash", data: Any = None, **fields: Any) -> bytes:
    """An event of ``car-1`` with wire fields replaced (``b=["x"]``...)."""
    payload = encode_event(Event("car-1", "b", 1, kind, 1_800_000_000_000_000, 3, data or {}))
    body = {**msgpack.unpackb(payload[4:], raw=False), **fields}
    return payload[:4] + msgpack.packb(body, use_bin_type=True)


def json_batch(**fields: Any) -> bytes:
    """The JSON form of a one-sample batch of ``car-1`` with fields replaced."""
    doc = {"schema": 1, "device_id": "car-1", "boot_id": "b", "seq": 1,
           "samples": [{"name": "Vehicle.Speed", "ts_us": 1_800_000_000_000_000, "value": 1.0}]}  # fmt: skip
    return json.dumps({**doc, **fields}).encode()


# The issue's examples, given to every property test as explicit examples.
ISSUE_TELEMETRY = [
    json_batch(samples=[{"name": "Vehicle.Speed", "ts_us": 10**30, "value": 1.0}]),
    json_batch(samples=[{"name": "Vehicle.Speed", "ts_us": 1, "value": 10**30}]),
    json_batch(samples=[{"name": "Vehicle.Speed", "ts_us": 1, "value": 10**330}]),
    json_batch(seq=2**64 - 1),
    json_batch(boot_id=["b"]),
    forge_telemetry(q=2**64 - 1),
    forge_telemetry(t0=2**64 - 1),
    forge_telemetry(b=["b"]),
    forge_telemetry(s=[["Vehicle.Speed", 2**64 - 1, "x"]]),
]
ISSUE_EVENTS = [
    forge_event(b=["b"]),
    forge_event(q=2**64 - 1),
    forge_event(t=2**64 - 1),
    forge_event("crash", {"peak_g": float("nan")}),
    forge_event("dtc", {"codes": ["P0301"] * 100_000}),
    forge_event("dtc", {"codes": [["P0301"]]}),
    forge_event("gate.plate", {"plate": "沪A12345", "camera": "gate-1"}),  # a car, not a gate
]
