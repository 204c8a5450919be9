"""Signal sources of the edge agent: an ABC, a registry and the CAN, log, simulator, OBD-II and GNSS plugins."""

from edge.sources.base import SOURCES, Source, SourceCounters, create_source

__all__ = ["SOURCES", "Source", "SourceCounters", "create_source"]
