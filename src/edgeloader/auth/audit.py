"""The audit trail: every entry goes to the store and to a structured log line."""

from __future__ import annotations

import asyncio
import logging
import time

from edgeloader.auth.store import AuditEntry, AuthStore

log = logging.getLogger("edgeloader.audit")


class Auditor:
    def __init__(self, store: AuthStore) -> None:
        self._store = store

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
            subject=subject,
            role=role,
            action=action,
            route=route,
            resource=resource,
            outcome=outcome,
            bytes=bytes_,
            detail=detail,
        )
        log.info(
            "audit %s %s by %s: %s",
            action,
            resource or route,
            subject,
            outcome,
            extra={"audit": entry.as_dict()},
        )
        await asyncio.to_thread(self._store.add_audit, entry)
