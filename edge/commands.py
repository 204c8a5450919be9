"""Signed commands on the device: verify, refuse or run, and answer on ``cmd-ack``.

Public API (the agent loop uses only this)::

    from edge.commands import CommandProcessor, Command
    from core.signing import load_public_key

    def lock(cmd: Command) -> dict | None: ...          # a handler: raise to report "failed"

    proc = CommandProcessor(device_id, [load_public_key("cmd-sign.pub")],  # several: rotation
                            allowlist={"lock", "unlock", "navigate"},
                            state_dir=settings.edge.state_dir,
                            handlers={"lock": lock, ...})
    # subscribe to f"carpulse/v1/{device_id}/cmd/+" (QoS 1), then for each message:
    ack_bytes = proc.handle(msg.topic, msg.payload)      # never raises; ~5 ms when accepted (fsync)
    publisher.publish(proc.ack_topic, ack_bytes)         # QoS 1

Checks, in order (the first failing one is the ack's ``reason``, see ``core.commands.REASONS``):
payload shape (``malformed``), signature present (``unsigned``), key id trusted (``unknown_key``,
``revoked_key``), signature valid (``bad_signature``), device id (``wrong_device``), topic name = body name (``topic_mismatch``), time window
(``not_yet_valid`` beyond ``clock_skew_s``, ``expired``, ``ttl_too_long`` beyond ``max_ttl_s``),
name (``unknown_command``, ``not_allowed``), nonce (``replayed``), arguments (``bad_args``).
A command that passes is recorded in the nonce store *before* its handler runs (at-most-once, even
across a crash), then the handler's return value becomes the ack's ``result``; a handler that
raises gives status ``failed`` with reason ``handler_failed``; one that raises
:class:`CommandRefused` gives status ``refused`` with its reason (``no_actuator``,
``no_head_unit``: this car cannot do it). A result's ``outcome`` text becomes the ack's detail.

Replay protection: nonces are kept with their expiry in ``<state_dir>/cmd-nonces.log`` (append,
fsync per accepted command; compacted when mostly expired), so a restart does not reopen the
window; ``max_ttl_s`` bounds how long any nonce must be remembered. The clock is not trusted to
only move forward: ``<state_dir>/cmd-hwm`` keeps the high-water mark of accepted issue times
(each capped at the device's clock when it was accepted, so a signer whose clock runs ahead
cannot push it into the future), written durably before the handler runs. Time checks use
``max(clock, mark)``, so after the clock moves back (RTC reset, GNSS time spoofed) a captured
command is still expired, and a device whose clock is stale refuses commands that expired before
the mark. Nonces are forgotten only once they expired before the mark, never on the clock alone.

Keys: the processor trusts a set of Ed25519 keys by id (``core.signing.key_id``; the body's
``kid`` picks one), minus the ids in ``revoked_key_ids``; :meth:`CommandProcessor.set_keys`
changes both at run time (the agent calls it on ``reload_config``), so keys rotate and are
revoked without reflashing.

A verified ``clear_dtcs`` command carries ``cmd.authorization``: a one-shot
``firmware_bridge.obd.base.ScopedAuthorization`` for OBD-II mode 04 (optionally bound to
``args["vin"]``), valid until the command expires (60 s at most), for the handler to pass to
``ObdClient.clear_dtcs``. ``read_dtcs`` only reads (modes 03/07), so it needs none.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.commands import (
    COMMANDS,
    NONCE_RE,
    Ack,
    AckStatus,
    CommandBody,
    SignedCommand,
    check_args,
    encode_ack,
    unpack_command,
)
from core.errors import WireError
from core.signing import key_id, verify
from core.topics import check_device_id, device_topic, parse_topic

log = logging.getLogger(__name__)

NONCE_FILE = "cmd-nonces.log"
HWM_FILE = "cmd-hwm"
MAX_AUTH_S = 60.0  # an OBD write authorisation never outlives this, whatever the command's ttl
_LOG_PER_REASON = 10  # then only counted: a flood of forged commands must not flood the log


@dataclass(frozen=True, slots=True)
class Command(CommandBody):
    """A verified command, as a handler receives it: the signed body (``core.commands``) and,
    for ``clear_dtcs``, its authorisation."""

    authorization: Any = None  # an OBD WriteAuthorization for clear_dtcs, else None


Handler = Callable[[Command], Mapping[str, Any] | None]


class NonceStore:
    """Nonces seen, each kept until its command's expiry; durable across restarts."""

    def __init__(self, path: Path, max_entries: int = 100_000) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self.bad_lines = 0
        self._live: dict[str, float] = {}
        self._lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            try:
                nonce, exp = parts[0], float(parts[1])
                ok = len(parts) == 2 and bool(NONCE_RE.match(nonce))
            except (IndexError, ValueError):
                ok = False
            if not ok:
                # A torn last line after a power cut is expected; anything else is worth a look.
                self.bad_lines += 1
                log.warning("%s:%d: ignoring malformed nonce line %r", self.path, lineno, line)
                continue
            self._live[nonce] = max(exp, self._live.get(nonce, exp))
            self._lines += 1

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, nonce: str) -> bool:
        return nonce in self._live

    def prune(self, now: float) -> None:
        """Forget nonces whose commands expired; rewrite the file when it is mostly dead lines."""
        self._live = {n: e for n, e in self._live.items() if e >= now}
        if self._lines > 2 * len(self._live) + 1000:
            self._rewrite()

    def full(self) -> bool:
        return len(self._live) >= self.max_entries

    def add(self, nonce: str, expires_at: float) -> None:
        """Remember ``nonce`` durably (fsync) before the command runs."""
        self._live[nonce] = expires_at
        new_file = not self.path.exists()
        with open(self.path, "a") as fh:
            fh.write(f"{nonce} {expires_at!r}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new_file:
            self._fsync_dir()  # a new file's directory entry must survive a power cut too
        self._lines += 1

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.writelines(f"{n} {e!r}\n" for n, e in self._live.items())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._fsync_dir()  # make the rename itself durable
        self._lines = len(self._live)


class HighWaterMark:
    """The latest accepted issue time, durable (write, fsync, rename) and never moving back."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.value = 0.0
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if math.isfinite(value) and value >= 0:
            self.value = value
        else:  # only a hand edit gets here: the file is replaced atomically
            log.error("%s: ignoring unreadable high-water mark %r", self.path, text[:40])

    def advance(self, t: float) -> None:
        if not t > self.value:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{t!r}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.value = t


def _obd_clear_authorization(cmd: CommandBody, now: float, monotonic: float) -> Any:
    """A one-shot mode 04 authorisation, or None when the OBD module is not installed."""
    try:
        from firmware_bridge.obd.base import ScopedAuthorization
    except ImportError:  # OBD support is optional on a gateway
        return None
    remaining = max(0.0, min(cmd.exp - now, MAX_AUTH_S))
    return ScopedAuthorization(
        services=frozenset({0x04}),
        vin=cmd.args.get("vin"),
        expires_at=monotonic + remaining,
        uses=1,
    )


class CommandRefused(Exception):
    """Raised by a handler when this car cannot do a verified command (``no_actuator``...):
    the ack is ``refused`` with ``reason`` and ``detail``, not ``failed``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class CommandProcessor:
    """Verifies and dispatches the commands of one device; see the module docstring."""

    def __init__(
        self,
        device_id: str,
        public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey],
        allowlist: Iterable[str],
        state_dir: Path | str,
        handlers: Mapping[str, Handler],
        *,
        revoked_key_ids: Iterable[str] = (),
        max_ttl_s: float = 24 * 3600.0,
        clock_skew_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = check_device_id(device_id)
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.revoked_key_ids: frozenset[str] = frozenset()
        self.set_keys(public_key, revoked_key_ids)
        self.allowlist = frozenset(allowlist)
        self.handlers = dict(handlers)
        self.max_ttl_s = max_ttl_s
        self.clock_skew_s = clock_skew_s
        self.clock = clock
        self.monotonic = monotonic
        self.nonces = NonceStore(Path(state_dir) / NONCE_FILE)
        self.mark = HighWaterMark(Path(state_dir) / HWM_FILE)
        self.nonces.prune(self.mark.value)
        self.counters: Counter[str] = Counter()

    def set_keys(
        self,
        public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
        revoked_key_ids: Iterable[str] = (),
    ) -> None:
        """Trust ``public_keys`` (by key id) except the revoked ids; replaces the previous set."""
        keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
        self.revoked_key_ids = frozenset(revoked_key_ids)
        self.keys = {kid: k for k in keys if (kid := key_id(k)) not in self.revoked_key_ids}
        if not self.keys:
            log.warning(
                "no trusted command key for %s: every command will be refused", self.device_id
            )

    @property
    def ack_topic(self) -> str:
        return device_topic(self.device_id, "cmd-ack")

    def handle(self, topic: str, payload: bytes) -> bytes:
        """Process one message from ``cmd/<name>`` and return the ack payload; never raises."""
        return encode_ack(self.process(topic, payload))

    def process(self, topic: str, payload: bytes) -> Ack:
        """Like :meth:`handle` but returns the :class:`~core.commands.Ack` itself."""
        body: CommandBody | None = None
        try:
            channel, signed = self._unpack(topic, payload)
            body = signed.body
            self._authenticate(channel, signed)
            cmd = self._admit(body)
        except _Refused as ref:
            return self._ack("refused", ref.reason, body, ref.detail)
        except Exception as err:  # never let a bad message kill the agent loop
            log.exception("unexpected error while checking a command on %s", topic)
            return self._ack("refused", "malformed", body, f"{type(err).__name__}: {err}")
        try:
            result = dict(self.handlers[cmd.name](cmd) or {})
        except CommandRefused as ref:
            return self._ack("refused", ref.reason, body, ref.detail)
        except Exception as err:
            log.warning("command %s (%s) failed: %s", cmd.name, cmd.id, err)
            return self._ack("failed", "handler_failed", body, f"{type(err).__name__}: {err}")
        # A handler says what the car did in result["outcome"] ("done: doors locked ..."): the
        # console shows the detail.
        outcome = result.get("outcome")
        return self._ack(
            "accepted", "ok", body, outcome if isinstance(outcome, str) else "", result
        )

    def _unpack(self, topic: str, payload: bytes) -> tuple[str, SignedCommand]:
        try:
            device, channel = parse_topic(topic)
        except WireError as err:
            raise _Refused("malformed", str(err)) from err
        if device != self.device_id:
            raise _Refused("wrong_device", f"topic {topic!r} is not for {self.device_id}")
        if not channel.startswith("cmd/"):
            raise _Refused("malformed", f"topic {topic!r} is not a command topic")
        try:
            return channel, unpack_command(payload)
        except WireError as err:
            raise _Refused(err.reason, err.detail) from err

    def _authenticate(self, channel: str, signed: SignedCommand) -> None:
        if not signed.signature:
            raise _Refused("unsigned", "the command carries no signature")
        kid = signed.body.kid
        if kid is None:
            raise _Refused("unknown_key", "the command names no signing key (kid)")
        if kid in self.revoked_key_ids:
            raise _Refused("revoked_key", f"key {kid} is revoked on this device")
        key = self.keys.get(kid)
        if key is None:
            raise _Refused("unknown_key", f"key {kid} is not trusted by this device")
        if not verify(key, signed):
            raise _Refused("bad_signature", f"signature ({signed.alg}) does not match key {kid}")
        body = signed.body
        if body.device != self.device_id:
            raise _Refused("wrong_device", f"signed for {body.device!r}, not {self.device_id!r}")
        if channel != f"cmd/{body.name}":
            raise _Refused("topic_mismatch", f"body names {body.name!r}, topic {channel!r}")

    def _admit(self, body: CommandBody) -> Command:
        clock = self.clock()
        now = max(clock, self.mark.value)  # a clock moved back does not reopen old commands
        if body.iat > now + self.clock_skew_s:
            raise _Refused("not_yet_valid", f"issued {body.iat - now:.0f}s in the future")
        if body.exp <= now:
            if body.exp > clock:
                raise _Refused(
                    "expired",
                    f"expired before the last accepted command ({now - body.exp:.0f}s earlier); "
                    "the device clock is behind",
                )
            raise _Refused("expired", f"expired {now - body.exp:.0f}s ago")
        if body.exp - body.iat > self.max_ttl_s:
            raise _Refused("ttl_too_long", f"ttl {body.exp - body.iat:.0f}s > {self.max_ttl_s}s")
        if body.name not in COMMANDS and body.name not in self.handlers:
            raise _Refused("unknown_command", f"{body.name!r} is not a carpulse command")
        if body.name not in self.allowlist:
            raise _Refused("not_allowed", f"{body.name!r} is not on this device's allowlist")
        if body.name not in self.handlers:
            raise _Refused("unknown_command", f"this device has no handler for {body.name!r}")
        self.nonces.prune(self.mark.value)  # only what expired before the mark: see the docstring
        if body.nonce in self.nonces:
            raise _Refused("replayed", f"nonce {body.nonce} was already used")
        if self.nonces.full():
            raise _Refused("replayed", "nonce store full: refusing until older commands expire")
        try:
            check_args(body.name, body.args)
        except WireError as err:
            raise _Refused(err.reason, err.detail) from err
        self.nonces.add(body.nonce, body.exp)
        self.mark.advance(min(body.iat, clock))
        auth = (
            _obd_clear_authorization(body, now, self.monotonic())
            if body.name == "clear_dtcs"
            else None
        )
        fields = {f.name: getattr(body, f.name) for f in dataclasses.fields(body)}
        return Command(**fields, authorization=auth)

    def _ack(
        self,
        status: AckStatus,
        reason: str,
        body: CommandBody | None,
        detail: str,
        result: dict[str, Any] | None = None,
    ) -> Ack:
        self.counters[reason] += 1
        if status != "accepted" and self.counters[reason] <= _LOG_PER_REASON:
            log.warning(
                "command %s %s: %s %s", body.name if body else "?", status, reason, detail[:200]
            )
        return Ack(
            status=status,
            reason=reason,
            id=body.id if body else None,
            name=body.name if body else None,
            detail=detail[:500],
            result=result or {},
            ts_us=int(self.clock() * 1e6),
        )
