"""OBD-II: ELM327 adapters over serial and raw ISO 15765-4 over CAN, read-only by default."""

from firmware_bridge.obd.base import (
    ObdTransport,
    ScopedAuthorization,
    WriteAuthorization,
    with_backoff,
)
from firmware_bridge.obd.client import ObdClient, Reading
from firmware_bridge.obd.dtc import Dtc

__all__ = [
    "Dtc",
    "ObdClient",
    "ObdTransport",
    "Reading",
    "ScopedAuthorization",
    "WriteAuthorization",
    "with_backoff",
]
