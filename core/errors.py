"""The one carpulse exception tree: every error carpulse raises on purpose is defined here.

::

    CarpulseError
     +-- ConfigError            bad or missing configuration (file, key, value named)
     |    +-- SchemaError       the CRM database's schema is not the one this carpulse needs
     |    +-- ProfileError      a CAN intrusion profile file that cannot be used
     |    +-- BackupError       a backup that cannot be made, a folder or restore target refused
     +-- SourceError            a data source (CAN, OBD-II, log file, camera) failed
     |    +-- SourceUnavailableError
     |    +-- SourceTimeoutError
     |    +-- DtcReadError      no usable answer from the car to a DTC request
     +-- DecodeError            bytes that do not decode (CAN frame, DBC, log line)
     |    +-- WireError         a wire message that is malformed or of an unknown version
     +-- PublishError           MQTT publish/connect failures
     +-- SinkError              InfluxDB or other sink failures
     +-- StackError             the local stack (Mosquitto, Kafka, InfluxDB) cannot start or is unhealthy
     +-- RuleError              CRM rule definitions and evaluation
     +-- WriteRefusedError      a request that changes the vehicle (OBD-II mode 04, UDS) not authorised
     +-- ActuatorError          an edge actuator (lock, unlock) could not act
     +-- HeadUnitError          the car's head unit is absent, silent or said no
     +-- ConsentError           a member without face consent cannot be enrolled
     +-- FieldError             one imported CRM value fails its check
     +-- CsvFileError           a CRM import file refused as a whole
     +-- DeliveryError          a CRM delivery attempt failed (``permanent``: dead letters at once)
     +-- Unplaced               an event names a VIN, device or plate the CRM does not know (yet)
     +-- CrmError               a CRM operation that cannot be done as asked
          +-- CouponStateError  a coupon transition its state does not allow
          +-- PrivacyError      a personal-data operation refused (consent, ticket, purpose)
          +-- InboxScopeError   an inbox card outside the caller's dealer or queues
          +-- DuplicateAction   an action already taken on an inbox card
          +-- DealerScopeError  a vehicle or customer of another dealer
          +-- LinkError         a member sign-in link malformed, tampered or expired (``reason``)
          +-- CounterError      a code the dealer's counter refuses (``reason``)
          +-- ClaimError        a claim of a shared coupon refused (``reason``)

Third-party exceptions are converted at one boundary with ``raise ... from err``.
"""

from __future__ import annotations


class CarpulseError(Exception):
    """Base class of every error carpulse raises on purpose."""


class ConfigError(CarpulseError):
    """Configuration is missing, malformed or contradictory."""


class SourceError(CarpulseError):
    """A data source failed."""


class SourceUnavailableError(SourceError):
    """A data source is not there (device unplugged, file missing)."""


class SourceTimeoutError(SourceError):
    """A data source did not answer in time."""


class DecodeError(CarpulseError):
    """Input bytes could not be decoded."""


class WireError(DecodeError):
    """A wire message is malformed or has an unknown schema version.

    ``reason`` is a short machine-friendly code used as the dead-letter reason.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PublishError(CarpulseError):
    """Publishing to the MQTT broker failed."""


class SinkError(CarpulseError):
    """Writing to a sink (InfluxDB) failed."""


class StackError(CarpulseError):
    """A local-stack service is missing, cannot start, or is unhealthy."""


class RuleError(CarpulseError):
    """A CRM rule is malformed or failed to evaluate."""


class SchemaError(ConfigError):
    """The CRM database's schema is not the one this carpulse needs."""


class ProfileError(ConfigError):
    """A CAN intrusion profile file that cannot be used (missing, too big, not JSON, wrong shape or values)."""


class BackupError(ConfigError):
    """A backup could not be made, or a backup folder / restore target is not acceptable."""


class DtcReadError(SourceError):
    """The car did not give a usable answer to a DTC request (counted by the caller)."""


class WriteRefusedError(CarpulseError):
    """A request that changes the vehicle (mode 04, UDS writes...) was not authorised."""


class ActuatorError(CarpulseError):
    """An edge actuator could not carry out the action (bus down, line busy, device gone...)."""


class HeadUnitError(CarpulseError):
    """The head unit is not there, did not answer in time, or said no."""


class ConsentError(CarpulseError):
    """A member without face consent cannot be enrolled."""


class FieldError(CarpulseError):
    """One imported CRM value that does not pass its check; the message says why."""


class CsvFileError(CarpulseError):
    """A CRM import file refused as a whole (unreadable, too large, header without required columns)."""


class DeliveryError(CarpulseError):
    """A CRM delivery attempt failed; ``permanent`` ones go to the dead letters at once."""

    def __init__(self, msg: str, permanent: bool = False) -> None:
        super().__init__(msg)
        self.permanent = permanent


class Unplaced(CarpulseError):
    """The event names a VIN, device or plate the CRM does not know (yet)."""


class CrmError(CarpulseError):
    """A CRM operation that cannot be done as asked (unknown customer, bad transition...)."""


class CouponStateError(CrmError):
    """A coupon transition that its state does not allow (redeeming an expired coupon...)."""


class PrivacyError(CrmError):
    """A personal-data operation refused: no consent, no ticket, unknown purpose."""


class InboxScopeError(CrmError):
    """The advisor inbox card is not one of the caller's dealer's (or not in the caller's queues)."""


class DuplicateAction(CrmError):
    """The action was already taken on this card (a second coupon of the same template)."""


class DealerScopeError(CrmError):
    """The vehicle or customer belongs to another dealer."""


class LinkError(CrmError):
    """A member sign-in link that is malformed, signed with another key (tampered) or expired."""

    def __init__(self, msg: str, reason: str) -> None:
        super().__init__(msg)
        self.reason = reason  # malformed | tampered | expired | used


class CounterError(CrmError):
    """A code the dealer's counter refuses; ``reason``: bad | unknown | ambiguous | other_dealer |
    redeemed | expired | voided."""

    def __init__(self, msg: str, reason: str) -> None:
        super().__init__(msg)
        self.reason = reason


class ClaimError(CrmError):
    """A claim of a shared coupon refused (no terms accepted, the sharer's own phone...)."""

    def __init__(self, msg: str, reason: str) -> None:
        super().__init__(msg)
        self.reason = reason
