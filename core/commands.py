"""Wire format of signed device commands (cloud -> device on ``cmd/<name>``) and their acks (``cmd-ack``).

A command is a JSON *body* signed as it is sent, like a JWS: the signature covers the exact body
bytes, so no canonical re-serialisation is needed on the device::

    payload = {"v": 1, "alg": "ed25519", "body": base64url(body_bytes), "sig": base64url(signature)}
    body    = {"id": "9f0c...", "device": "car-1", "name": "lock", "args": {...},
               "iat": 1767000000.0, "exp": 1767000060.0, "nonce": "b1946ac92492d2347c6235b4d2611184",
               "kid": "3f1c0a9e5b7d2e44"}
    signed  = SIGNING_CONTEXT + body_bytes      # domain separation: these bytes sign nothing else

``iat``/``exp`` are Unix seconds; ``nonce`` is 16 to 64 hex characters and never reused (the device
remembers nonces until they expire). ``kid`` names the signing key (``core.signing.key_id``: the
first 16 hex digits of the SHA-256 of the raw public key); it is inside the signed body, so it
cannot be swapped, and it lets a device trust several keys at once (rotation) and distrust one by
its id (revocation) without reflashing. The ack the device publishes on ``cmd-ack`` is small JSON::

    {"v": 1, "id": "9f0c..." | null, "name": "lock" | null, "status": "accepted|refused|failed",
     "reason": "ok|unsigned|bad_signature|expired|...", "detail": "...", "ts_us": ..., "result": {...}}

This module holds only the format and argument checks; signing needs ``cryptography`` and lives
in ``edge.signing``. Every malformed input raises :class:`~core.errors.WireError` with a reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from core.checks import bounded_str, check_tree, int64
from core.errors import WireError
from core.topics import check_device_id

COMMAND_VERSION: Final = 1
SIGNING_CONTEXT: Final = b"carpulse-command-v1\x00"
ALG_ED25519: Final = "ed25519"
MAX_PAYLOAD: Final = 64 * 1024
NONCE_RE: Final = re.compile(r"^[0-9a-f]{16,64}$")
ID_RE: Final = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
KID_RE: Final = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# The commands a device understands; an agent may implement a subset (its allowlist).
COMMANDS: Final[dict[str, str]] = {
    "navigate": "push a navigation destination: {address} or {lat, lon}, optional {label}",
    "lock": "lock the doors",
    "unlock": "unlock the doors",
    "read_dtcs": "read the diagnostic trouble codes (OBD-II mode 03/07)",
    "clear_dtcs": "clear the DTCs (OBD-II mode 04; needs a write authorisation): optional {vin}",
    "replace_campaign": "replace the collection campaigns: {campaign: {...}} with a version",
    "reload_config": "re-read the agent's configuration file",
}

AckStatus = Literal["accepted", "refused", "failed"]

# Refusal reasons, in the order the device checks them.
REASONS: Final[tuple[str, ...]] = (
    "malformed",  # not a command payload at all
    "unsigned",  # no signature
    "unknown_key",  # no key id, or one this device does not trust
    "revoked_key",  # signed with a key this device was told to distrust
    "bad_signature",  # forged or tampered
    "wrong_device",  # signed for another device
    "topic_mismatch",  # body name differs from the topic's cmd/<name>
    "not_yet_valid",  # issued in the future beyond the allowed clock skew
    "expired",  # also: expired before a command this device already accepted was issued
    "ttl_too_long",  # exp - iat above the device's limit (keeps the nonce store bounded)
    "unknown_command",
    "not_allowed",  # known but not on this device's allowlist
    "replayed",
    "bad_args",
    "no_actuator",  # verified, but this car has nothing that can do it (no lock actuator...)
    "no_head_unit",  # navigate on a car without a configured head unit
    "handler_failed",  # status "failed": verified, but carrying it out went wrong
)


@dataclass(frozen=True, slots=True)
class CommandBody:
    """A decoded, not yet verified, command body."""

    id: str
    device: str
    name: str
    args: dict[str, Any]
    iat: float
    exp: float
    nonce: str
    kid: str | None = None  # the signing key's id; a device refuses a body without one

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "id": self.id,
            "device": self.device,
            "name": self.name,
            "args": self.args,
            "iat": self.iat,
            "exp": self.exp,
            "nonce": self.nonce,
        }
        if self.kid is not None:
            doc["kid"] = self.kid
        return json.dumps(
            doc,
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        ).encode()


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command payload split into the signed bytes, the signature and the decoded body."""

    alg: str
    body_bytes: bytes
    signature: bytes
    body: CommandBody


@dataclass(frozen=True, slots=True)
class Ack:
    """The device's answer to one command."""

    status: AckStatus
    reason: str
    id: str | None = None
    name: str | None = None
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    ts_us: int = 0


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_PAYLOAD * 2:
        raise WireError("malformed", f"{what} is not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise WireError("malformed", f"{what} is not base64url: {err}") from err


def signing_input(body_bytes: bytes) -> bytes:
    """The exact bytes a command signature covers."""
    return SIGNING_CONTEXT + body_bytes


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise WireError("malformed", f"command body has no {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError("malformed", f"command field {key!r} has the wrong type")
    return value


def parse_body(body_bytes: bytes) -> CommandBody:
    """Decode and type-check a command body (does not verify anything)."""
    try:
        doc = json.loads(body_bytes)
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError("malformed", f"command body is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise WireError("malformed", "command body is not a JSON object")
    cid = _field(doc, "id", str)
    if not ID_RE.match(cid):
        raise WireError("malformed", "command id must be 1-64 of [0-9A-Za-z_-]")
    device = _field(doc, "device", str)
    name = _field(doc, "name", str)
    args = _field(doc, "args", dict)
    iat = float(_field(doc, "iat", (int, float)))
    exp = float(_field(doc, "exp", (int, float)))
    nonce = _field(doc, "nonce", str)
    if not NONCE_RE.match(nonce):
        raise WireError("malformed", "nonce must be 16-64 lower-case hex characters")
    if not (math.isfinite(iat) and math.isfinite(exp)):
        raise WireError("malformed", "iat and exp must be finite")
    kid = doc.get("kid")
    if kid is not None and not (isinstance(kid, str) and KID_RE.match(kid)):
        raise WireError("malformed", "kid must be 1-64 of [0-9A-Za-z_.-]")
    return CommandBody(cid, device, name, args, iat, exp, nonce, kid)


def pack_command(alg: str, body_bytes: bytes, signature: bytes) -> bytes:
    """The payload published on ``cmd/<name>``."""
    return json.dumps(
        {"v": COMMAND_VERSION, "alg": alg, "body": b64e(body_bytes), "sig": b64e(signature)},
        separators=(",", ":"),
    ).encode()


def unpack_command(payload: bytes) -> SignedCommand:
    """Split a ``cmd/<name>`` payload (``WireError('malformed')`` when it is not one).

    An unsigned command comes back with an empty ``signature`` and ``alg``.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError("malformed", "payload is not bytes")
    if len(payload) > MAX_PAYLOAD:
        raise WireError("malformed", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        doc = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError("malformed", f"payload is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise WireError("malformed", "payload is not a JSON object")
    if doc.get("v") != COMMAND_VERSION:
        raise WireError("malformed", f"unknown command version {doc.get('v')!r}")
    if "body" not in doc:
        raise WireError("malformed", "payload has no body")
    body_bytes = b64d(doc["body"], "body")
    body = parse_body(body_bytes)
    # A missing signature is reported by the verifier as "unsigned", with the body's id.
    sig_text = doc.get("sig")
    alg = doc.get("alg")
    if sig_text in (None, "") or not isinstance(alg, str):
        return SignedCommand("", body_bytes, b"", body)
    return SignedCommand(alg, body_bytes, b64d(sig_text, "sig"), body)


def new_body(
    device_id: str,
    name: str,
    args: dict[str, Any],
    ttl_s: float,
    nonce: str,
    command_id: str,
    now: float | None = None,
    kid: str | None = None,
) -> CommandBody:
    """A fresh body valid from now for ``ttl_s`` seconds (the signer's side)."""
    check_device_id(device_id)
    if not NAME_RE.match(name):
        raise ValueError(f"bad command name {name!r}")
    if not NONCE_RE.match(nonce):
        raise ValueError("nonce must be 16-64 lower-case hex characters")
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    if kid is not None and not KID_RE.match(kid):
        raise ValueError(f"bad key id {kid!r}")
    t = time.time() if now is None else now
    return CommandBody(command_id, device_id, name, dict(args), t, t + ttl_s, nonce, kid)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_args(name: str, args: dict[str, Any]) -> None:
    """Raise ``WireError('bad_args', ...)`` when ``args`` do not fit command ``name``."""
    if name == "navigate":
        has_addr = isinstance(args.get("address"), str) and 0 < len(args["address"]) <= 500
        has_pos = _finite(args.get("lat")) and _finite(args.get("lon"))
        if not (has_addr or has_pos):
            raise WireError("bad_args", "navigate needs an address (1-500 chars) or lat and lon")
        if has_pos and not (-90 <= args["lat"] <= 90 and -180 <= args["lon"] <= 180):
            raise WireError("bad_args", "lat must be in [-90, 90] and lon in [-180, 180]")
    elif name == "clear_dtcs":
        vin = args.get("vin")
        if vin is not None and not (isinstance(vin, str) and len(vin) == 17):
            raise WireError("bad_args", "vin must be a 17-character string")
    elif name == "replace_campaign":
        campaign = args.get("campaign")
        if not isinstance(campaign, dict) or not campaign:
            raise WireError("bad_args", "replace_campaign needs a non-empty campaign object")


def encode_ack(ack: Ack) -> bytes:
    return json.dumps(
        {
            "v": COMMAND_VERSION,
            "id": ack.id,
            "name": ack.name,
            "status": ack.status,
            "reason": ack.reason,
            "detail": ack.detail,
            "ts_us": ack.ts_us,
            "result": ack.result,
        },
        separators=(",", ":"),
        default=str,  # a handler's result may hold dates or paths: never fail the ack on them
    ).encode()


def decode_ack(payload: bytes) -> Ack:
    """Decode an ack; every field type- and range-checked, else ``WireError('malformed')``."""
    if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_PAYLOAD:
        raise WireError("malformed", "ack is not bytes of at most 64 KiB")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise WireError("malformed", f"ack is not JSON: {str(err)[:200]}") from err
    if type(doc) is not dict or doc.get("v") != COMMAND_VERSION:
        raise WireError("malformed", "ack is not a version-1 JSON object")
    status = doc.get("status")
    if status not in ("accepted", "refused", "failed"):
        raise WireError("malformed", "unknown ack status")
    cid, name = doc.get("id"), doc.get("name")
    if cid is not None and (type(cid) is not str or not ID_RE.fullmatch(cid)):
        raise WireError("malformed", "ack id must be a command id or null")
    if name is not None:
        bounded_str(name, "malformed", "ack name", max_len=64)
    ts_us = doc.get("ts_us")
    result = {} if doc.get("result") is None else doc.get("result")
    if type(result) is not dict:
        raise WireError("malformed", "ack result must be an object")
    return Ack(
        status=status,
        reason=bounded_str(doc.get("reason", ""), "malformed", "ack reason", max_len=64),
        id=cid,
        name=name,
        detail=bounded_str(doc.get("detail", ""), "malformed", "ack detail"),
        result=check_tree(result, "malformed", "ack result"),
        ts_us=0 if ts_us is None else int64(ts_us, "malformed", "ack ts_us"),
    )
