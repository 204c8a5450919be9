"""The source ABC (python-can ``BusABC`` style) and the registry ``kind -> "module:Class"``.

The public methods do the shared work (open/closed checks, argument checks, dropping samples whose
name is not a VSS path, counting, closing once); a plugin fills in ``_open_internal``,
``_read_internal`` and ``_close_internal``. Plugins are imported only when used, so a missing
optional driver never breaks the others; installed packages add more through the entry-point
group ``carpulse.edge.sources``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from core.errors import ConfigError, SourceError, SourceUnavailableError
from core.plugins import plugin_class, registry
from core.wire import NAME_RE, Samples

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "carpulse.edge.sources"

SOURCES: dict[str, str] = {
    "can": "edge.sources.can:CanSource",
    "log": "edge.sources.log:LogSource",
    "sim": "edge.sources.sim:SimSource",
    "obd": "edge.sources.obd:ObdSource",
    "gnss": "edge.sources.gnss:GnssSource",
    "tick": "edge.sources.tick:TickSource",
}


@dataclass
class SourceCounters:
    """What a source delivered and dropped; exact, for the agent's stats."""

    reads: int = 0
    samples: int = 0
    bad_names: int = 0  # samples dropped because their name is not a VSS path
    errors: int = 0  # reads that raised a SourceError

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Source(ABC):
    """A producer of VSS-named samples in blocks; ``read`` never blocks longer than ``timeout``."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = SourceCounters()
        self._is_open = False
        self._name_ok: dict[tuple[str, ...], np.ndarray] = {}
        # Events a source finds besides samples (an OBD source's ``dtc``): (kind, ts_us, priority,
        # data), appended by the source's thread and taken by the agent loop (deque: thread-safe).
        self.events: deque[tuple[str, int, int, dict[str, Any]]] = deque(maxlen=256)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def exhausted(self) -> bool:
        """True when a finite source (a log replayed once) has nothing more to give."""
        return False

    def open(self) -> None:
        """Open the device or file (idempotent); raises ``SourceUnavailableError``."""
        if self._is_open:
            return
        self._open_internal()
        self._is_open = True

    def read(self, timeout: float) -> Samples:
        """The next block of samples (possibly empty after ``timeout`` seconds)."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        if not self._is_open:
            raise SourceUnavailableError(f"{self!r} is not open")
        try:
            got = self._read_internal(timeout)
        except SourceError:
            self.counters.errors += 1
            raise
        self.counters.reads += 1
        if got is None or not len(got):
            return Samples.empty()
        ok = self._valid_names(got.names)
        if not ok.all():
            keep = ok[got.sig]
            self.counters.bad_names += int((~keep).sum())
            got = Samples(got.names, got.sig[keep], got.ts_us[keep], got.value[keep])
        self.counters.samples += len(got)
        return got

    def _valid_names(self, names: tuple[str, ...]) -> np.ndarray:
        ok = self._name_ok.get(names)
        if ok is None:
            ok = np.fromiter((bool(NAME_RE.match(n)) for n in names), bool, len(names))
            bad = [n for n, good in zip(names, ok.tolist(), strict=True) if not good]
            if bad:
                log.warning("%r: dropping samples of non-VSS names, e.g. %s", self, bad[:3])
            self._name_ok[names] = ok
        return ok

    def close(self) -> None:
        """Release the device (idempotent)."""
        if self._is_open:
            self._is_open = False
            self._close_internal()

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _open_internal(self) -> None: ...

    @abstractmethod
    def _read_internal(self, timeout: float) -> Samples | None: ...

    def _close_internal(self) -> None:  # noqa: B027 - optional hook
        """Release resources; default: nothing to release."""


def _registry() -> dict[str, str]:
    return registry(SOURCES, ENTRY_POINT_GROUP)


def source_class(kind: str) -> type[Source]:
    """Import the plugin class registered for ``kind``."""
    return plugin_class(_registry(), kind, Source, "source type")


def create_source(kind: str, name: str, options: dict[str, Any]) -> Source:
    """Build a source from its config table; bad options raise ``ConfigError`` naming the source."""
    cls = source_class(kind)
    try:
        return cls(name, **options)
    except TypeError as err:
        raise ConfigError(f"source {name!r} (type {kind}): {err}") from err
