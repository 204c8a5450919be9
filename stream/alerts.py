"""Device events on the fast path: crash alerts within a second, DTC lists into the live state.

Events are handled one by one as they arrive (no micro-batching: a crash must not wait for a
batch to fill). ``handle_event`` is pure: it returns the alert to publish, the dead-letter
record if the event is bad, and the table writes; the agent does the I/O, alert first.
Events are deduplicated on (device, boot_id, seq) like telemetry, under the dedupe key
``<device>|events``, so an edge that resends a crash after a reconnect raises one alert.

A crash alert carries the vehicle's latest fix of the current ownership whatever the consent
(vital interest: the call centre sends help there; the CRM keeps it only with consent and the
console shows it only through ``crm.privacy.read_location``); the ``vehicle-state`` record a DTC
event publishes carries a location only as the vehicle's ``LocationPolicy`` allows.

Origin and shape checks: ``gate.*`` events count only from registered gate cameras
(``DeviceRegistry.is_gate``, else ``not_a_gate``), a DTC list must be at most ``MAX_DTCS`` SAE
codes (``bad_dtc``). ``handle_event`` never raises: anything unforeseen is a dead letter with
reason ``internal_error:<type>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from core.checks import check_dtcs
from core.errors import WireError
from core.wire import Event, decode_event
from stream import state as vstate
from stream.dedupe import DeviceSeen
from stream.privacy import PrivacyView, alert_location, public_state
from stream.registry import DeviceRegistry

T_DEDUPE: Final = "dedupe"
T_STATE: Final = "vehicle_state"
ALERT_KINDS: Final = frozenset({"crash"})

Lookup = Callable[[str, str], bytes | None]


@dataclass
class EventResult:
    alert: tuple[str, bytes] | None = None
    dead: tuple[bytes, dict[str, bytes]] | None = None
    state_update: tuple[str, bytes] | None = None
    writes: list[tuple[str, str, bytes]] = field(default_factory=list)  # table, key, value
    duplicate: bool = False


def dtc_key(vin: str) -> str:
    """Key of a vehicle's active DTC list in the ``vehicle_state`` table."""
    return f"{vin}|dtc"


def crash_alert(
    kind: str, vin: str, device: str, ts_us: int, data: dict[str, Any], st: vstate.State | None,
    received_us: int,
) -> bytes:  # fmt: skip
    """The alert record: what happened, to which vehicle, where it last was."""
    doc = {
        "kind": kind,
        "vin": vin,
        "device": device,
        "ts_us": ts_us,
        "received_us": received_us,
        "data": data,
        "location": st.get("location") if st else None,
        "severity": "critical",
    }
    return json.dumps(doc, default=str).encode()


def _dead(payload: bytes, reason: str, detail: str) -> EventResult:
    detail_b = detail[:500].encode("utf-8", "replace")
    return EventResult(dead=(payload, {"reason": reason.encode(), "detail": detail_b}))


def handle_event(
    payload: bytes,
    registry: DeviceRegistry,
    lookup: Lookup,
    received_us: int,
    privacy: PrivacyView | None = None,
) -> EventResult:
    """What to do with one record of ``carpulse.events``; never raises."""
    try:
        ev = decode_event(payload)
        if ev.kind.startswith("gate."):
            if not registry.is_gate(ev.device_id):
                return _dead(payload, "not_a_gate", f"{ev.device_id!r} is not a registered gate")
            return _gate_event(payload, ev, lookup)
        return _vehicle_event(payload, ev, registry, lookup, received_us, privacy)
    except WireError as err:
        return _dead(payload, err.reason, err.detail)
    except Exception as err:  # a hostile record never stops the partition
        return _dead(payload, f"internal_error:{type(err).__name__}", str(err))


def _gate_event(payload: bytes, ev: Event, lookup: Lookup) -> EventResult:
    """A gate camera's event: deduplicated here, acted on by the CRM worker."""
    res = EventResult()
    key = f"{ev.device_id}|events"
    seen = DeviceSeen.from_bytes(lookup(T_DEDUPE, key))
    verdict = seen.check(ev.boot_id, ev.seq)
    res.duplicate = verdict == "duplicate"
    if verdict == "stale":
        return _dead(payload, "stale_seq", f"seq {ev.seq}")
    if verdict == "new":
        res.writes.append((T_DEDUPE, key, seen.to_bytes()))
    return res


def _vehicle_event(
    payload: bytes,
    ev: Event,
    registry: DeviceRegistry,
    lookup: Lookup,
    received_us: int,
    privacy: PrivacyView | None = None,
) -> EventResult:
    res = EventResult()
    codes = check_dtcs(ev.data.get("codes"), "dtc codes") if ev.kind == "dtc" else None
    vin = registry.vin(ev.device_id)
    if vin is None:
        detail = f"{ev.device_id!r} is not in the registry"
        res.dead = (payload, {"reason": b"unknown_device", "detail": detail.encode()})
        return res
    key = f"{ev.device_id}|events"
    seen = DeviceSeen.from_bytes(lookup(T_DEDUPE, key))
    verdict = seen.check(ev.boot_id, ev.seq)
    if verdict != "new":
        res.duplicate = verdict == "duplicate"
        if verdict == "stale":
            res.dead = (payload, {"reason": b"stale_seq", "detail": f"seq {ev.seq}".encode()})
        return res
    res.writes.append((T_DEDUPE, key, seen.to_bytes()))
    raw = lookup(T_STATE, vin)
    st = vstate.loads(raw) if raw else None
    policy = None if privacy is None else privacy.get(vin)
    if ev.kind in ALERT_KINDS:
        where = {"location": alert_location(st, policy)}
        res.alert = (
            vin,
            crash_alert(ev.kind, vin, ev.device_id, ev.ts_us, ev.data, where, received_us),
        )
    if codes is not None:
        # Under its own key: the telemetry agent owns the vehicle's main entry and merges this
        # one in, so the two agents never overwrite each other's read-modify-write.
        res.writes.append((T_STATE, dtc_key(vin), json.dumps(codes).encode()))
        st = st or vstate.new_state(vin, ev.device_id)
        vstate.set_dtcs(st, codes, ev.ts_us)
        res.state_update = (vin, vstate.dumps(public_state(st, policy)))
    return res
