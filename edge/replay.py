"""``carpulse replay``: a recorded CAN log sent by the real edge agent, as a car would send it.

The agent gets one source, a ``log`` source (``edge.sources.log``: candump, ASC or BLF through
python-can's readers), so the frames take the route of a live bus: the compiled DBC decoder, the
VSS mapping, the agent's batches, its durable queue (``<state_dir>/<device>.queue.sqlite``) and
its publisher (MQTT/TLS with the device's certificate, QoS 1). The replay ends when the log is
read and every batch is acknowledged by the broker; a batch still queued then (a broker that
never answered) stays in the durable queue for the device's next run.

The VSS mapping: ``mapping="auto"`` picks the shipped mapping (``firmware_bridge/mappings``)
written for the DBC's file name (its ``dbc:`` key; when several cars share a DBC, the one named
like the log's folder, ``canlogs/gt350/x.log`` -> ``gt350``); a name or a file picks one;
``"none"`` sends every DBC signal under its private name ``Vehicle.Private.Dbc.<message>.<signal>``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.config import CarpulseSettings
from core.errors import ConfigError, DecodeError, PublishError, SourceUnavailableError

log = logging.getLogger(__name__)

NO_MAPPING = "none"
AUTO_MAPPING = "auto"


def shipped_mapping_dbcs() -> dict[str, str]:
    """Shipped mapping name -> the DBC file name it was written for (its ``dbc:`` key)."""
    import yaml

    from firmware_bridge.vss import shipped_mappings

    out: dict[str, str] = {}
    for path in shipped_mappings():
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("dbc"), str):
            out[path.stem] = doc["dbc"]
    return out


def resolve_mapping(mapping: str | None, dbc: Path | str, log_path: Path | str) -> str | None:
    """The mapping the replay uses (a shipped name or a file), or None for private DBC names."""
    if mapping is not None and mapping.lower() == NO_MAPPING:
        return None
    if mapping is not None and mapping.lower() != AUTO_MAPPING:
        return mapping
    dbc_name = Path(dbc).name
    found = sorted(name for name, d in shipped_mapping_dbcs().items() if d == dbc_name)
    if len(found) == 1:
        return found[0]
    folder = Path(log_path).resolve().parent.name
    if folder in found:
        return folder
    if found:
        raise ConfigError(
            f"several shipped VSS mappings are written for {dbc_name} ({', '.join(found)}): "
            "pick one with --mapping"
        )
    raise ConfigError(
        f"no shipped VSS mapping is written for {dbc_name}: give --mapping FILE (the format of "
        "firmware_bridge/mappings/*.yaml), or --mapping none to send the DBC's own signal names "
        "as Vehicle.Private.Dbc.<message>.<signal>"
    )


def _count_lines(path: Path) -> int | None:
    """Lines of a text log (the progress bar's total), None for a binary one."""
    from firmware_bridge.can_logs import TEXT_SUFFIXES

    if path.suffix.lower() not in TEXT_SUFFIXES:
        return None
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def replay_log(
    log_path: Path | str,
    dbc_path: Path | str,
    device_id: str,
    s: CarpulseSettings,
    *,
    mapping: str | None = AUTO_MAPPING,
    rate: str | float = "max",
    strict: bool = True,
    progress: bool = False,
    connect_timeout_s: float = 15.0,
) -> dict[str, Any]:
    """Send a CAN log through the edge agent; returns what was read, refused and published.

    Bad input (a missing log, a DBC that does not load, a bad mapping or rate) raises a
    ``CarpulseError`` before anything connects. ``report["flushed"]`` is False when batches were
    left in the durable queue (``report["error"]`` says why).
    """
    from edge.agent import AgentConfig, EdgeAgent
    from edge.sources.log import LogSource, parse_rate
    from firmware_bridge.dbc import load_dbc

    path = Path(log_path)
    if not path.is_file():
        raise SourceUnavailableError(f"CAN log {path} does not exist or is not a file")
    parse_rate(rate, "replay")
    load_dbc(dbc_path, strict=strict)  # a bad DBC is named before anything else
    mapping_name = resolve_mapping(mapping, dbc_path, path)
    settings = s.model_copy(
        update={
            "edge": s.edge.model_copy(update={"device_id": device_id}),
            "metrics": s.metrics.model_copy(update={"edge_port": 0}),  # no /metrics server
        }
    )
    table = {"type": "log", "name": "log", "log": str(path), "dbc": str(dbc_path),
             "mapping": mapping_name, "rate": rate, "strict": strict}  # fmt: skip
    agent = EdgeAgent(settings, AgentConfig(sources=[table]))
    src = agent.sources[0]
    assert isinstance(src, LogSource)
    try:
        src.open()  # decoder compiled, mapping checked: a ConfigError ends here, not in a thread
    except BaseException:
        agent.queue.close()
        raise
    failure: list[str] = []
    t0 = time.monotonic()

    def watch_connection() -> None:
        if agent.pub.connects:
            return
        refused = getattr(agent.pub, "_refused", None)
        if refused or time.monotonic() - t0 > connect_timeout_s:
            e = settings.edge
            failure.append(
                f"broker {e.broker_host}:{e.broker_port} refused {device_id}: {refused}"
                if refused
                else f"no connection to the MQTT broker at {e.broker_host}:{e.broker_port} "
                f"within {connect_timeout_s:.0f} s"
            )
            agent.stop()

    agent.tick_hooks.append(watch_connection)
    bar = None
    if progress:
        from rich.progress import Progress

        total = _count_lines(path)
        from rich.console import Console

        bar = Progress(console=Console(stderr=True), transient=True)  # stdout: the JSON line
        task = bar.add_task(f"{device_id}: {path.name}", total=total)

        def show() -> None:
            st = agent.stats
            bar.update(
                task,
                completed=src.frames_read + src.refused,
                description=f"{device_id}: {path.name}: {src.frames_read:,} frames, "
                f"{st['samples_out']:,} samples queued, {st['acked']:,} batches acknowledged",
            )

        agent.tick_hooks.append(show)
        bar.start()
    try:
        stats = agent.run(exit_when_done=True)
    finally:
        if bar is not None:
            bar.stop()
    left = _queued_rows(agent)
    flushed = not failure and left == 0 and src.exhausted
    decoder = src.decoder
    report = {
        "device_id": device_id,
        "boot_id": stats["boot_id"],
        "log": str(path),
        "mapping": mapping_name or NO_MAPPING,
        "frames": src.frames_read,
        "unknown_id": 0 if decoder is None else decoder.unknown_id,
        "refused": src.refused,
        "refused_examples": src.refused_examples(),
        "batches": stats["batches"],
        "samples": stats["samples_out"],
        "bytes": stats["bytes_enqueued"],
        "acknowledged": stats["acked"],
        "queued_left": left,
        "flushed": flushed,
        "seconds": round(time.monotonic() - t0, 3),
    }
    if not flushed:
        why = failure[0] if failure else "the replay stopped before every batch was acknowledged"
        report["error"] = (
            f"{why}; {left} message(s) stay in the durable queue "
            f"{agent.state_dir / (device_id + '.queue.sqlite')} for the device's next run"
        )
    elif report["frames"] and report["unknown_id"] == report["frames"]:
        # A wrong DBC for the log is a user mistake, not an empty success.
        report["error"] = (
            f"none of {report['frames']} frames matched the DBC {dbc_path} "
            f"({report['unknown_id']} unknown ids): is it the right DBC for this log?"
        )
    return report


def _queued_rows(agent: Any) -> int:
    """Rows left in the agent's durable queue (closed at the end of ``run``: reopen to count)."""
    from edge.queue import DurableQueue

    q = DurableQueue(agent.state_dir / f"{agent.device_id}.queue.sqlite")
    try:
        return len(q)
    finally:
        q.close()


def raise_on_error(report: dict[str, Any]) -> None:
    """Raise what went wrong: batches left queued (``PublishError``), a log the DBC does not
    decode at all (``DecodeError``)."""
    if not report.get("flushed"):
        raise PublishError(str(report.get("error", "replay not flushed")))
    if report.get("error"):
        raise DecodeError(str(report["error"]))
