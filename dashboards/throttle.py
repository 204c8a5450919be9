"""Login throttling per account and per client address, counted from the audit log's failures.

The audit log already holds every failed login (``login.failed``: actor = the name typed, subject =
``addr:<client address>``), so every dashboard process agrees on the counts without a table of its
own. An account is refused for ``window_s`` after ``max_account`` failures since its last
successful login; an address after ``max_address`` failures whatever the names, so guessing across
many accounts from one place is slowed too. A refused attempt checks no password (no argon2 cost)
and answers 429 with the seconds to wait in ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.schema import AuditRecord, utcnow


def address_subject(host: str | None) -> str:
    return f"addr:{host or '-'}"[:64]


@dataclass
class LoginThrottle:
    max_account: int = 5
    max_address: int = 20
    window_s: float = 900.0
    refused: int = 0

    def _wait(self, s: Session, since: dt.datetime, limit: int, *where: Any) -> float:
        """Seconds until fewer than ``limit`` failures matching ``where`` lie after ``since``
        (the window's start); 0 when already fewer."""
        n, oldest = s.execute(
            select(func.count(AuditRecord.id), func.min(AuditRecord.at)).where(
                AuditRecord.action == "login.failed", AuditRecord.at >= since, *where
            )
        ).one()
        if n < limit or oldest is None:
            return 0.0
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        # the oldest counted failure leaves the window then (more failures keep it closed)
        return max(1.0, (oldest - since).total_seconds())

    def retry_after(self, s: Session, username: str, host: str | None) -> int:
        """Seconds to wait before this account may try from this address again (0: go ahead)."""
        since = utcnow() - dt.timedelta(seconds=self.window_s)
        last_ok = s.scalar(
            select(func.max(AuditRecord.at)).where(
                AuditRecord.action == "login", AuditRecord.actor == username
            )
        )
        account = [AuditRecord.actor == username]
        if last_ok is not None:  # a successful login starts the account's count again
            account.append(AuditRecord.at > last_ok)
        wait = max(
            self._wait(s, since, self.max_account, *account),
            self._wait(s, since, self.max_address, AuditRecord.subject == address_subject(host)),
        )
        if wait:
            self.refused += 1
        return math.ceil(wait)
