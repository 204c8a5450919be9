"""Ed25519 command-signing keys: create, load, sign (cloud side) and verify (device side).

Key distribution (provisioning): the cloud / call centre holds the *private* key
(``cmd-sign.key``, PEM PKCS#8, mode 0600, ideally in an HSM or a secrets manager) and signs every
command with :func:`sign_command`; each device gets only the *public* key (``cmd-sign.pub``, PEM
SubjectPublicKeyInfo), installed read-only next to its certificate. A stolen device therefore
cannot forge commands for other devices. ``carpulse pki command-key`` creates the pair under the
local stack's PKI folder for development and tests.

Every command names its key (``kid``, :func:`key_id`) inside the signed body, and a device trusts a
set of public keys, so keys rotate and are revoked without reflashing: ship the next public key
to the devices (``[edge.commands] public_keys``, then a signed ``reload_config``) while still
signing with the current one, switch the signer, then list the old key's id in
``revoked_key_ids`` (or drop its file) and ``reload_config`` again. A device refuses a command
whose key id it does not trust (``unknown_key``) or was told to distrust (``revoked_key``).

It lives in ``core`` because both sides use it (the edge verifies, the cloud and the dashboards
sign) and ``edge`` and the cloud never import each other; it depends only on ``core`` and
``cryptography``, which is in the base install.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.commands import ALG_ED25519, SignedCommand, new_body, pack_command, signing_input
from core.errors import ConfigError

PRIVATE_NAME = "cmd-sign.key"
PUBLIC_NAME = "cmd-sign.pub"


def generate_keypair(folder: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create ``cmd-sign.key`` (0600) and ``cmd-sign.pub`` in ``folder``; keep existing ones."""
    folder = Path(folder)
    priv, pub = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if priv.exists() and pub.exists() and not overwrite:
        return priv, pub
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """The signing key; ``ConfigError`` naming the file when it is missing or not Ed25519."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"command signing key {p}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"command signing key {p} is not an Ed25519 key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """The device's verification key; ``ConfigError`` naming the file on any problem."""
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"command verification key {p}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"command verification key {p} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The id commands carry for ``key``: 16 hex digits of the SHA-256 of the raw public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """``{key id: key}`` for a device's trusted verification keys."""
    return {key_id(k): k for k in keys}


def sign_command(
    private_key: Ed25519PrivateKey,
    device_id: str,
    name: str,
    args: dict[str, Any] | None,
    ttl_s: float,
    nonce: str | None = None,
    *,
    now: float | None = None,
    command_id: str | None = None,
) -> bytes:
    """The payload to publish on ``command_topic(device_id, name)``, valid for ``ttl_s`` seconds."""
    body = new_body(
        device_id,
        name,
        args or {},
        ttl_s,
        nonce or secrets.token_hex(16),
        command_id or uuid.uuid4().hex,
        now,
        key_id(private_key),
    )
    body_bytes = body.to_json()
    return pack_command(ALG_ED25519, body_bytes, private_key.sign(signing_input(body_bytes)))


def verify(public_key: Ed25519PublicKey, cmd: SignedCommand) -> bool:
    """True when ``cmd`` carries a valid Ed25519 signature by ``public_key``'s private key."""
    if cmd.alg != ALG_ED25519 or len(cmd.signature) != 64:
        return False
    try:
        public_key.verify(cmd.signature, signing_input(cmd.body_bytes))
    except InvalidSignature:
        return False
    return True
