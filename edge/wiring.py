"""Plugs crash detection, signed commands and systemd's watchdog into the agent loop.

``[edge.crash]`` (on by default; any ``edge.crash.CrashConfig`` field), ``[edge.commands]``
(``public_key``/``public_keys`` files, ``revoked_key_ids``, ``allowlist``; off without a key) with
the ``[edge.actuators.<name>]`` that carry out lock/unlock and the ``[edge.head_unit]`` that gets
``navigate`` destinations (``edge.headunit``), and
systemd (automatic when the agent runs under a unit with ``Type=notify``/``WatchdogSec``). Each
part is optional: the agent runs without it when its table says so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from core.topics import command_topic
from core.wire import Event, Samples

log = logging.getLogger(__name__)

CMD_ACK_PRIORITY = 1


class CrashSection(BaseModel):
    """``[edge.crash]``: ``enabled`` plus any ``CrashConfig`` threshold."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = Field(True, description="Run crash detection on every micro-batch.")


class CommandsSection(BaseModel):
    """``[edge.commands]``: signed commands on ``cmd/<name>``."""

    model_config = ConfigDict(extra="forbid")

    public_key: Path | None = Field(
        None, description="Ed25519 verification key (PEM) from provisioning."
    )
    public_keys: list[Path] = Field(
        [],
        description="More trusted verification keys (PEM), e.g. the next key during a rotation.",
    )
    revoked_key_ids: list[str] = Field(
        [],
        description="Key ids (core.signing.key_id) refused even when their key file is listed.",
    )
    allowlist: list[str] = Field(
        ["navigate", "lock", "unlock", "read_dtcs", "replace_campaign", "reload_config"],
        description="Commands this device accepts (lock/unlock/navigate are refused with "
        "no_actuator/no_head_unit when the car has nothing to carry them out).",
    )
    max_ttl_s: float = Field(24 * 3600.0, gt=0, description="Longest command validity accepted.")


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[edge.{name}] must be a table")
    return value


def build_actuators(edge_doc: dict[str, Any]) -> list[Any]:
    """The ``[edge.actuators.<name>]`` tables as actuators (``edge.actuators``)."""
    tables = _section(edge_doc, "actuators")
    if not tables:
        return []
    from edge.actuators import create_actuator

    out = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[edge.actuators.{name}] must be a table")
        out.append(create_actuator(str(name), table))
    return out


def build_head_unit(edge_doc: dict[str, Any]) -> Any:
    """``[edge.head_unit]`` as a client, or None when the car has none configured."""
    table = _section(edge_doc, "head_unit")
    if not table:
        return None
    from edge.headunit import HeadUnitClient, HeadUnitConfig

    try:
        return HeadUnitClient(HeadUnitConfig.model_validate(table))
    except ValidationError as err:
        raise ConfigError(f"[edge.head_unit]: {err}") from err


def attach_crash(agent: Any, edge_doc: dict[str, Any]) -> None:
    """Run ``edge.crash.CrashDetector`` on every block; alarms become priority-0 events."""
    section = CrashSection.model_validate(_section(edge_doc, "crash"))
    if not section.enabled:
        return
    from edge.crash import CrashConfig, CrashDetector

    names = {f.name for f in dataclasses.fields(CrashConfig)}
    extra = section.model_extra or {}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise ConfigError(f"[edge.crash]: unknown setting(s) {', '.join(unknown)}")
    opts: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
    det = CrashDetector(CrashConfig(**opts))
    agent.crash = det

    def hook(block: Samples) -> list[Event]:
        return [a.to_event(agent.device_id, agent.seq.boot_id, 0) for a in det.update(block)]

    agent.sample_hooks.append(hook)


def attach_commands(agent: Any, edge_doc: dict[str, Any], config_path: Path | None) -> None:
    """Subscribe to ``cmd/+``, verify each command (``edge.commands``) and queue its ack."""
    section = CommandsSection.model_validate(_section(edge_doc, "commands"))
    if section.public_key is None and not section.public_keys:
        return
    from core.errors import ActuatorError
    from core.signing import load_public_key
    from edge.commands import Command, CommandProcessor, CommandRefused

    actuators = build_actuators(edge_doc)
    head_unit = build_head_unit(edge_doc)
    agent.actuators = actuators
    stop_hooks = getattr(agent, "stop_hooks", None)
    if stop_hooks is not None:
        stop_hooks.extend(a.close for a in actuators)

    def keys_of(sec: CommandsSection) -> list[Any]:
        paths = ([sec.public_key] if sec.public_key else []) + list(sec.public_keys)
        return [load_public_key(p) for p in paths]

    def replace_campaign(cmd: Command) -> dict[str, Any]:
        result = agent.campaigns.apply(cmd.args.get("campaign", {}))
        if not result["ok"]:
            raise ValueError(f"{result['reason']}: {result.get('detail', '')}")
        return result  # type: ignore[no-any-return]

    def reload_config(cmd: Command) -> dict[str, Any]:
        if config_path is None:
            raise ValueError("the agent was started without a config file")
        from edge.agent import edge_tables

        doc = edge_tables(config_path)
        applied = [agent.campaigns.apply(c) for c in doc.get("campaigns", [])]
        # Key rotation and revocation without reflashing: the trusted keys are re-read too.
        new = CommandsSection.model_validate(_section(doc, "commands"))
        proc.set_keys(keys_of(new), new.revoked_key_ids)
        return {
            "campaigns": [a.get("name") for a in applied if a["ok"]],
            "trusted_keys": sorted(proc.keys),
        }

    def navigate(cmd: Command) -> dict[str, Any]:
        if head_unit is None:
            raise CommandRefused("no_head_unit", "this car has no head unit ([edge.head_unit])")
        got = head_unit.navigate(cmd.id, dict(cmd.args))  # HeadUnitError: ack "failed"
        return {"outcome": f"done: head unit {got['status']}", "head_unit": got}

    def actuate(cmd: Command) -> dict[str, Any]:
        chosen = [a for a in actuators if cmd.name in a.actions]
        if not chosen:
            raise CommandRefused(
                "no_actuator", f"this car has no actuator that can {cmd.name} ([edge.actuators])"
            )
        done = []
        for act in chosen:
            try:
                done.append(act.act(cmd.name))
            except ActuatorError as err:
                ok = ", ".join(d["actuator"] for d in done) or "none"
                raise ActuatorError(f"{err} (already done: {ok})") from err
        names = ", ".join(f"{d['actuator']} ({d['kind']})" for d in done)
        return {"outcome": f"done: {cmd.name} by {names}", "done": done}

    def read_dtcs(cmd: Command) -> dict[str, Any]:
        for src in agent.sources:
            client = getattr(src, "client", None)
            if src.kind == "obd" and client is not None:
                return {"dtcs": [d.as_dict() for d in client.dtcs()]}
        raise ValueError("this device has no OBD-II source")

    handlers = {
        "replace_campaign": replace_campaign,
        "reload_config": reload_config,
        "navigate": navigate,
        "lock": actuate,
        "unlock": actuate,
        "read_dtcs": read_dtcs,
    }
    proc = CommandProcessor(
        agent.device_id,
        keys_of(section),
        allowlist=section.allowlist,
        state_dir=agent.state_dir,
        handlers=handlers,
        revoked_key_ids=section.revoked_key_ids,
        max_ttl_s=section.max_ttl_s,
    )
    inbox: deque[tuple[str, bytes]] = deque(maxlen=1000)  # filled by paho's thread
    agent.pub.subscriptions.append(command_topic(agent.device_id, "x").rsplit("/", 1)[0] + "/+")
    agent.pub.on_message = lambda topic, payload: inbox.append((topic, payload))
    agent.commands = proc

    def tick() -> None:
        while inbox:
            topic, payload = inbox.popleft()
            ack = proc.handle(topic, payload)  # never raises; handlers run here, in the loop
            seq = agent.seq.next()
            agent.queue.put(
                "cmd-ack", proc.ack_topic, ack, priority=CMD_ACK_PRIORITY,
                boot_id=agent.seq.boot_id, seq=seq,
            )  # fmt: skip

    agent.tick_hooks.append(tick)


def attach_systemd(agent: Any) -> None:
    """READY=1 once running, WATCHDOG=1 from the work loop, STOPPING=1 on the way out."""
    from edge import systemd

    wd = systemd.Watchdog()
    state = {"ready": False}

    def tick() -> None:
        if not state["ready"]:
            state["ready"] = True
            systemd.ready(f"{len(agent.sources)} source(s)")
        wd.kick()
        wd.status(
            f"in {agent.stats['samples_in']} out {agent.stats['samples_out']} samples, "
            f"backlog {agent.queue.nbytes} bytes, {'online' if agent.pub.connected else 'offline'}"
        )

    agent.tick_hooks.append(tick)
    agent.stop_hooks.append(systemd.stopping)


def attach_all(agent: Any, config_path: Path | None) -> None:
    from edge.agent import edge_tables

    doc = edge_tables(config_path)  # the file's [edge] tables with CARPULSE_EDGE__* on top
    attach_crash(agent, doc)
    from edge.intrusion import attach_intrusion

    attach_intrusion(agent, doc)  # [edge.intrusion]: off unless enabled with a profile
    attach_commands(agent, doc, config_path)
    attach_systemd(agent)
