"""The location-privacy record the CRM publishes per vehicle (compacted topic ``carpulse.privacy``).

Key: the VIN. Value (JSON)::

    {"v": 1, "vin": "...", "location": true|false, "ownership": "<ownership period id>",
     "since_us": <start of the current ownership, us>, "changed_us": <when this became so, us>}

``location`` is true only when the vehicle's *current* owner consents to location storage;
``ownership`` tags every stored position with the period it belongs to, so that erasure and
retention can delete exactly that period's points. A vehicle without a record, a tombstone or a
record that does not decode means "no": the stream stores no position (default deny).
Signals under ``Vehicle.CurrentLocation.`` (position, altitude, heading, the GNSS receiver's
fields) are location data; every other signal flows whatever the consent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from core.errors import WireError

LOCATION_PREFIX: Final = "Vehicle.CurrentLocation."
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"
# InfluxDB tag keys of a stored position (beside the stream's ``device`` tag)
TAG_VIN: Final = "vin"
TAG_OWNERSHIP: Final = "ownership"
_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_RECORD: Final = 1024
INT64_MAX: Final = 2**63 - 1


def is_location_signal(name: str) -> bool:
    """True for a VSS path that tells where the vehicle is (or was)."""
    return name.startswith(LOCATION_PREFIX)


@dataclass(frozen=True)
class LocationPolicy:
    """Whether positions of ``vin`` may be stored now, and for which ownership period."""

    vin: str
    location: bool
    ownership: str
    since_us: int
    changed_us: int = 0

    def allows(self, ts_us: int) -> bool:
        """A position taken at ``ts_us`` may be stored and shown: consent, current ownership."""
        return self.location and ts_us >= self.since_us

    def encode(self) -> bytes:
        doc = {"v": 1, "vin": self.vin, "location": self.location, "ownership": self.ownership,
               "since_us": self.since_us, "changed_us": self.changed_us}  # fmt: skip
        return json.dumps(doc, separators=(",", ":")).encode()


def _int(doc: dict[str, Any], key: str) -> int:
    v = doc.get(key)
    if type(v) is not int or not -INT64_MAX <= v <= INT64_MAX:
        raise WireError("bad_privacy_record", f"{key} must be an int64, got {v!r}")
    return v


def decode_policy(key: bytes | None, value: bytes | None) -> LocationPolicy | None:
    """The policy in a record; None for a tombstone. Raises ``WireError`` for a bad record."""
    if value is None:
        return None
    if len(value) > MAX_RECORD:
        raise WireError("bad_privacy_record", f"{len(value)} bytes > {MAX_RECORD}")
    try:
        doc = json.loads(value)
    except ValueError as err:
        raise WireError("bad_privacy_record", f"not JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise WireError("bad_privacy_record", "not a version 1 object")
    vin, ownership, location = doc.get("vin"), doc.get("ownership"), doc.get("location")
    if not isinstance(vin, str) or not _ID_RE.match(vin):
        raise WireError("bad_privacy_record", f"bad vin {vin!r}")
    if key is not None and key != vin.encode():
        raise WireError("bad_privacy_record", f"key {key!r} is not the record's vin {vin!r}")
    if not isinstance(ownership, str) or not _ID_RE.match(ownership):
        raise WireError("bad_privacy_record", f"bad ownership {ownership!r}")
    if not isinstance(location, bool):
        raise WireError("bad_privacy_record", f"location must be true or false, not {location!r}")
    return LocationPolicy(vin, location, ownership, _int(doc, "since_us"), _int(doc, "changed_us"))
