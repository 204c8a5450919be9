"""The one carpulse exception tree.

::

    CarpulseError
     +-- ConfigError            bad or missing configuration (file, key, value named)
     +-- SourceError            a data source (CAN, OBD-II, log file, camera) failed
     |    +-- SourceUnavailableError
     |    +-- SourceTimeoutError
     +-- DecodeError            bytes that do not decode (CAN frame, DBC, log line)
     |    +-- WireError         a wire message that is malformed or of an unknown version
     +-- PublishError           MQTT publish/connect failures
     +-- SinkError              InfluxDB or other sink failures
     +-- StackError             the local stack (Mosquitto, Kafka, InfluxDB) cannot start or is unhealthy
     +-- RuleError              CRM rule definitions and evaluation

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
