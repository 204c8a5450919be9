"""What the shell fills in from the local stack's folder before it starts library code.

The libraries never look for the development stack themselves: the edge agent reads only
``[edge] ca_file``, ``cert_file`` and ``key_file`` (a Pi knows nothing of the stack's folders), and
the dashboard takes its fallback password file, signing key and demo folder as arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.config import CarpulseSettings
from edge.publisher import DeviceMqtt, device_mqtt_settings

if TYPE_CHECKING:
    from dashboards.serve import LocalFiles


def with_device_certs(s: CarpulseSettings, device_id: str | None = None) -> CarpulseSettings:
    """``s`` with ``[edge]``'s three TLS files taken from the local stack's PKI for ``device_id``
    (default ``[edge] device_id``).

    Settings that name all three files come back unchanged; so do settings whose stack has no CA
    yet (the edge code then says what to set). The device's certificate is issued on first use
    and the device gets its ACL role on the broker.
    """
    e = s.edge
    if e.cert_file and e.key_file and e.ca_file:
        return s
    from carpulse.stack import Stack

    stack = Stack(s.stack)
    if not stack.pki.ca_cert.exists():
        return s
    cert, key = stack.provision_device(device_id or e.device_id)
    files = {"ca_file": stack.pki.device_trust, "cert_file": cert, "key_file": key}
    return s.model_copy(update={"edge": e.model_copy(update=files)})


def local_device_mqtt(s: CarpulseSettings, device_id: str) -> DeviceMqtt:
    """One device's connection, its certificate from the local stack when ``[edge]`` names none."""
    return device_mqtt_settings(with_device_certs(s, device_id), device_id)


def dashboard_local_files(s: CarpulseSettings) -> LocalFiles:
    """The local stack's console password file, command-signing key and folder, for
    ``dashboards.serve`` (used only where ``[dashboard]`` names none)."""
    from carpulse.stack import Stack
    from dashboards.serve import LocalFiles

    stack = Stack(s.stack)
    return LocalFiles(
        mqtt_password_file=stack.secret_file(s.dashboard.mqtt_username),
        signing_key_file=stack.pki.root / "cmd-sign.key",
        folder=stack.root,
    )
