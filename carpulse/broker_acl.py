"""Mosquitto access control of the local stack: dynamic-security roles, their file, $CONTROL.

Access control is Mosquitto 2's dynamic-security plugin, not ACL files: the ACL-file checker
allows every SUBSCRIBE (mosquitto 2.0 checks ACL files only when a message is delivered), so a
device could join the bridge's shared subscription (``$share/carpulse-bridge/...``) and be handed
other cars' telemetry, which is then dropped instead of reaching the bridge. The plugin checks
subscriptions against subscribe ACLs and denies anything not granted (``defaultACLAccess``).
It has no ``%u`` patterns in 2.0, so each device is a plugin client with a role of its own
(``device:<id>``), added when its certificate is issued: to the file while the broker is stopped,
through ``$CONTROL/dynamic-security/v1`` (as ``carpulse-admin``) while it runs. Devices log in on
the device listener by certificate only (the plugin's password check is never consulted there)
and have no password, so they cannot log in on the service listener; service accounts have
passwords and no certificate of the device CA, so they cannot log in on the device listener.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import secrets
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from core.errors import StackError

PLUGIN: Final = "mosquitto_dynamic_security.so"
CONTROL: Final = "$CONTROL/dynamic-security/v1"
ADMIN: Final = "carpulse-admin"
_ROOT: Final = "carpulse/v1"
_DEVICE_CHANNELS: Final = ("telemetry", "events", "status", "cmd-ack")
DEFAULT_ACCESS: Final = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def device_role(device_id: str) -> dict[str, Any]:
    """The role of one device: publish on its own channels, receive its own commands; no more."""
    base = f"{_ROOT}/{device_id}"
    acls = [_acl("publishClientSend", f"{base}/{ch}") for ch in _DEVICE_CHANNELS]
    acls += [
        _acl("subscribePattern", f"{base}/cmd/#"),  # also admits cmd/+ and cmd/<name>
        _acl("publishClientReceive", f"{base}/cmd/#"),
    ]
    return {"rolename": f"device:{device_id}", "acls": acls}


def service_roles() -> list[dict[str, Any]]:
    """Roles of the service accounts (each account has the role of its own name)."""
    bridge = []
    for ch in _DEVICE_CHANNELS:
        bridge += [
            _acl("subscribePattern", f"{_ROOT}/+/{ch}"),
            # A shared subscription is checked with its $share/<group>/ prefix.
            _acl("subscribePattern", f"$share/+/{_ROOT}/+/{ch}"),
            _acl("publishClientReceive", f"{_ROOT}/+/{ch}"),
        ]
    console = [
        # Signed commands out, acks back: the dashboards use MQTT for nothing else
        # (telemetry, state and events reach them through Kafka).
        _acl("publishClientSend", f"{_ROOT}/+/cmd/+"),
        _acl("subscribePattern", f"{_ROOT}/+/cmd-ack"),
        _acl("publishClientReceive", f"{_ROOT}/+/cmd-ack"),
    ]
    admin = [
        _acl("publishClientSend", CONTROL),
        _acl("subscribePattern", f"{CONTROL}/response"),
        _acl("publishClientReceive", f"{CONTROL}/response"),
    ]
    return [
        {"rolename": "carpulse-bridge", "acls": bridge},
        {"rolename": "carpulse-console", "acls": console},
        {"rolename": ADMIN, "acls": admin},
    ]


def _pw_hash(password: str) -> dict[str, Any]:
    """The plugin's password record: PBKDF2-HMAC-SHA512, 12-byte salt (its own format)."""
    # The service secrets are 24 random bytes (secrets.token_urlsafe): key stretching would add
    # login latency on every connect and no strength, so the count stays modest.
    salt, iterations = secrets.token_bytes(12), 1_000
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def plugin_path() -> str:
    """Path of Debian's dynamic-security plugin (in the ``mosquitto`` package)."""
    found = sorted(glob.glob(f"/usr/lib/*/{PLUGIN}") + glob.glob(f"/usr/lib/{PLUGIN}"))
    if not found:
        raise StackError(f"{PLUGIN} not found: install it with `apt-get install -y mosquitto`")
    return found[0]


def _device_entries(device_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    role = device_role(device_id)
    return {"username": device_id, "roles": [{"rolename": role["rolename"]}]}, role


def write_config(path: Path, passwords: Mapping[str, str], device_ids: Iterable[str]) -> None:
    """The plugin's file from scratch: the service accounts and every issued device."""
    clients = [
        {"username": user, **_pw_hash(pw), "roles": [{"rolename": user}]}
        for user, pw in passwords.items()
    ]
    roles = service_roles()
    for device_id in device_ids:
        client, role = _device_entries(device_id)
        clients.append(client)
        roles.append(role)
    _save(
        path, {"clients": clients, "groups": [], "roles": roles, "defaultACLAccess": DEFAULT_ACCESS}
    )


def _save(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)


def known_clients(path: Path) -> set[str]:
    """User names in the plugin's file (which the running broker saves after each change)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return {
        str(c["username"])
        for c in doc.get("clients", [])
        if isinstance(c, dict) and "username" in c
    }


def add_devices_to_file(path: Path, device_ids: Iterable[str]) -> None:
    """Add devices to the file of a stopped broker (it reads the file when it starts)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # not prepared yet: the stack's prepare() lists every issued device
    known = known_clients(path)
    missing = [d for d in device_ids if d not in known]
    for device_id in missing:
        client, role = _device_entries(device_id)
        doc.setdefault("clients", []).append(client)
        doc.setdefault("roles", []).append(role)
    if missing:
        _save(path, doc)


def register_commands(device_ids: Iterable[str]) -> list[dict[str, Any]]:
    """$CONTROL commands giving each device its role on a running broker."""
    commands: list[dict[str, Any]] = []
    for device_id in device_ids:
        client, role = _device_entries(device_id)
        commands += [{"command": "createRole", **role}, {"command": "createClient", **client}]
    return commands


def unregister_commands(device_id: str) -> list[dict[str, Any]]:
    """$CONTROL commands removing a device: deleting its client also ends its live session."""
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": f"device:{device_id}"},
    ]


def control(
    host: str,
    port: int,
    ca_file: Path,
    admin_password: str,
    commands: list[dict[str, Any]],
    ok_errors: tuple[str, ...] = (),
) -> None:
    """Send ``commands`` to the plugin as ``carpulse-admin``; ``StackError`` on any refusal."""
    import paho.mqtt.client as paho

    replies: list[dict[str, Any]] = []
    refused: list[str] = []
    done, subscribed = threading.Event(), threading.Event()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"{ADMIN}-{secrets.token_hex(4)}",
        protocol=paho.MQTTv311,
    )
    client.tls_set(ca_certs=str(ca_file))
    client.username_pw_set(ADMIN, admin_password)

    def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
        else:
            c.subscribe(f"{CONTROL}/response", qos=1)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        replies.extend(json.loads(msg.payload).get("responses", []))
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(host, port)
    except (OSError, ssl.SSLError) as err:
        raise StackError(f"cannot reach the broker to change its ACLs: {err}") from err
    client.loop_start()
    try:
        if not subscribed.wait(10) or refused:
            raise StackError(
                f"the broker did not let {ADMIN} manage its ACLs ({refused or 'no answer'}): "
                "if an older carpulse started it, restart it with "
                "`carpulse stack down && carpulse stack up`"
            )
        client.publish(CONTROL, json.dumps({"commands": commands}), qos=1)
        if not done.wait(10):
            raise StackError("the broker's dynamic-security plugin did not answer")
    finally:
        client.disconnect()
        client.loop_stop()
        client._reset_sockets(sockpair_only=True)  # paho frees its wake-up pair only in GC
    for reply in replies:
        problem = reply.get("error")
        if problem and not any(ok in problem for ok in ok_errors):
            raise StackError(f"dynamic-security {reply.get('command')}: {problem}")
