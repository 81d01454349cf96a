"""The audit log: every change and every refusal, append-only, through every door.

`record` is called by `byoi.api.dispatch` (and by the browser sign-in routes for sign-ins and refused tokens);
nothing updates or deletes a row. A record holds who (principal, access key), how (door, source address,
request id), what (operation, resource ARN) and the outcome ("ok" or the error code), never a request's
members, so no secret or password can reach it.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from byoi.auth.principal import Principal
from byoi.logs import request_id
from byoi.services.context import ServiceContext
from byoi.store.schema_identity import audit_log

log = logging.getLogger("byoi.audit")


class AuditLog:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def record(self, principal: Principal, operation: str, resource_arn: str | None, outcome: str) -> None:
        """Append one record. A failure to write it is logged, never raised: the change it describes has
        already happened (or the refusal already been decided) and must still be answered."""
        values = {
            "at": time.time(),
            "principal": principal.name,
            "access_key_id": principal.access_key_id,
            "door": principal.door,
            "operation": operation,
            "resource_arn": resource_arn,
            "outcome": outcome,
            "source": principal.source,
            "request_id": request_id.get(),
        }
        try:
            async with self.ctx.db.transaction() as conn:
                await conn.execute(sa.insert(audit_log).values(**values))
        except Exception:  # the store is failing; the log line keeps the record
            log.exception("could not write the audit record", extra={"audit": values})
