"""The audit trail: every entry goes to the store and to a structured log line.

Each text field is capped (``FIELD_MAX`` characters), and the store keeps
the audit under a byte limit and a retention period (``AuthLimits``), so no
client input can make it grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time

from edgeloader.auth.store import AuditEntry, AuthStore
from edgeloader.metrics import Metrics

log = logging.getLogger("edgeloader.audit")

#: Audited (action, outcome) pairs counted in ``edgeloader_auth_events_total``.
AUTH_EVENTS = {
    ("login", "ok"): "login_ok",
    ("login", "denied"): "login_denied",
    ("login", "forbidden"): "login_forbidden",
    ("token", "ok"): "token_ok",
    ("token", "denied"): "token_denied",
    ("refresh", "ok"): "refresh_ok",
    ("refresh", "reuse-detected"): "refresh_reuse",
    ("logout", "ok"): "logout",
    ("key-create", "ok"): "key_created",
    ("key-revoke", "ok"): "key_revoked",
}

#: The longest a text field of an entry may be; longer ones are cut, marked with "…".
FIELD_MAX = 512


def capped(text: str, limit: int = FIELD_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Auditor:
    def __init__(self, store: AuthStore, metrics: Metrics, max_bytes: int | None = None) -> None:
        self.metrics = metrics
        self._store = store
        self._max_bytes = max_bytes

    async def record(
        self,
        *,
        subject: str,
        role: str,
        action: str,
        route: str,
        resource: str = "",
        outcome: str = "ok",
        bytes_: int = 0,
        detail: str = "",
    ) -> None:
        entry = AuditEntry(
            at=time.time(),
            subject=capped(subject),
            role=capped(role),
            action=capped(action),
            route=capped(route),
            resource=capped(resource),
            outcome=capped(outcome),
            bytes=bytes_,
            detail=capped(detail),
        )
        log.info(
            "audit %s %s by %s: %s",
            entry.action,
            entry.resource or entry.route,
            entry.subject,
            entry.outcome,
            extra={"audit": entry.wire()},
        )
        if (event := AUTH_EVENTS.get((action, outcome))) is not None:
            self.metrics.auth_event(event)
        await asyncio.to_thread(self._store.add_audit, entry, self._max_bytes)
