"""Deleting stored positions from InfluxDB: erasure, retention purge, consent withdrawal.

The stream writes a position only with the tags ``vin`` and ``ownership`` (``core.privacy``), so
one ownership period's positions are one delete, and the other signals (tag ``device`` only)
are never touched. InfluxDB 1.x: ``DELETE FROM ... WHERE`` through ``/query``; 2.x:
``POST /api/v2/delete`` with a predicate (which has no regular expressions, so the retention
purge there deletes period by period). Synchronous, like the rest of the CRM.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from core.config import InfluxSettings
from core.errors import SinkError
from core.privacy import TAG_OWNERSHIP, TAG_VIN

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAR: Final = dt.datetime(2262, 1, 1, tzinfo=dt.UTC)  # InfluxDB's timestamps end in 2262


def _ql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ql_ident(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pred_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ns(t: dt.datetime) -> int:
    return int((t - EPOCH).total_seconds()) * 1_000_000_000 + t.microsecond * 1000


def v1_delete_period(
    measurement: str, vin: str, ownership: str, since: dt.datetime | None = None
) -> str:
    """InfluxQL deleting one ownership period's positions (from ``since`` on, if given)."""
    q = (f"DELETE FROM {_ql_ident(measurement)} WHERE {_ql_ident(TAG_VIN)} = {_ql_str(vin)} "
         f"AND {_ql_ident(TAG_OWNERSHIP)} = {_ql_str(ownership)}")  # fmt: skip
    return q if since is None else f"{q} AND time >= {_ns(since)}"


def v1_purge(measurement: str, before: dt.datetime) -> str:
    """InfluxQL deleting every stored position older than ``before`` (any period)."""
    return (f"DELETE FROM {_ql_ident(measurement)} WHERE {_ql_ident(TAG_OWNERSHIP)} =~ /.+/ "
            f"AND time < {_ns(before)}")  # fmt: skip


def v2_delete_body(
    measurement: str, vin: str, ownership: str, start: dt.datetime, stop: dt.datetime
) -> dict[str, str]:
    """The JSON body of ``POST /api/v2/delete`` for one period's positions in ``[start, stop]``."""
    predicate = (f"_measurement={_pred_str(measurement)} AND {TAG_VIN}={_pred_str(vin)} "
                 f"AND {TAG_OWNERSHIP}={_pred_str(ownership)}")  # fmt: skip
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return {"start": start.strftime(fmt), "stop": stop.strftime(fmt), "predicate": predicate}


@dataclass
class InfluxLocations:
    """Deletes positions from the stream's InfluxDB (the sink's own settings)."""

    settings: InfluxSettings
    measurement: str = "telemetry"
    requests: list[str] = field(default_factory=list)  # what was sent, for the audit

    def _request(self, url: str, body: bytes | None, headers: dict[str, str]) -> None:
        req = urllib.request.Request(url, data=body if body is not None else b"", method="POST",
                                     headers=headers)  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                text = resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            raise SinkError(f"InfluxDB delete refused ({err.code}): {detail}") from err
        except OSError as err:
            raise SinkError(f"InfluxDB at {self.settings.url} unreachable: {err}") from err
        if text.strip().startswith("{"):
            doc = json.loads(text)
            for res in doc.get("results", []):
                if "error" in res:
                    raise SinkError(f"InfluxDB delete failed: {res['error']}")

    def _v1(self, q: str) -> None:
        s = self.settings
        params = {"db": s.database, "q": q}
        headers = {}
        if s.username and s.password:
            cred = f"{s.username}:{s.password.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + b64encode(cred).decode()
        url = f"{s.url.rstrip('/')}/query?{urllib.parse.urlencode(params)}"
        self._request(url, None, headers)
        self.requests.append(q)

    def _v2(self, body: dict[str, str]) -> None:
        s = self.settings
        token = ""
        if s.token is not None:
            token = s.token.get_secret_value()
        elif s.token_file is not None:
            token = s.token_file.read_text().strip()
        params = urllib.parse.urlencode({"org": s.org, "bucket": s.bucket})
        headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
        url = f"{s.url.rstrip('/')}/api/v2/delete?{params}"
        self._request(url, json.dumps(body).encode(), headers)
        self.requests.append(body["predicate"])

    def delete_period(self, vin: str, ownership: str, since: dt.datetime | None = None) -> None:
        """Delete the positions of ``vin`` stored under ``ownership`` (from ``since`` on)."""
        if self.settings.api == "v1":
            self._v1(v1_delete_period(self.measurement, vin, ownership, since))
        else:
            self._v2(v2_delete_body(self.measurement, vin, ownership, since or EPOCH, FAR))

    def purge(self, before: dt.datetime, periods: Iterable[tuple[str, str]] = ()) -> None:
        """Delete positions older than ``before``; v2 needs the ``(vin, ownership)`` periods."""
        if self.settings.api == "v1":
            self._v1(v1_purge(self.measurement, before))
            return
        for vin, ownership in periods:
            self._v2(v2_delete_body(self.measurement, vin, ownership, EPOCH, before))
