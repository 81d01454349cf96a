"""Keyset pagination shared by every List operation.

A `NextToken` carries the sort value and id of the last row returned plus a fingerprint of the
request's filters, so a page never skips or repeats rows when others are inserted meanwhile, and a
token reused with different filters is refused rather than silently giving wrong results.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from byoi.errors import ValidationException


@dataclass(frozen=True)
class Page:
    rows: list[sa.Row[Any]]
    next_token: str | None


def _fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


_INVALID = "NextToken is not valid: it was not returned by this operation"
_INT64 = range(-(2**63), 2**63)


def _decode(token: str, fingerprint: str, sort_type: type) -> tuple[Any, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        key, last_id, fp = data["k"], data["i"], data["f"]
    except (ValueError, KeyError, TypeError):
        raise ValidationException(_INVALID) from None
    if fp != fingerprint:
        raise ValidationException("NextToken was returned for different filters or sorting than this request's")
    # A token is only base64 JSON, so one can be forged: its values must have the types (and sizes) of the
    # columns they are compared with, or the store would fail on the query instead of refusing it here.
    if not _fits(key, sort_type) or not _fits(last_id, int):
        raise ValidationException(_INVALID)
    return key, last_id


def _fits(value: Any, wanted: type) -> bool:
    if isinstance(value, bool):
        return False
    if wanted is float:
        return (isinstance(value, float) and math.isfinite(value)) or (isinstance(value, int) and value in _INT64)
    if wanted is int:
        return isinstance(value, int) and value in _INT64
    if wanted is str:
        return isinstance(value, str) and "\x00" not in value
    return False


async def fetch_page(
    conn: Any,
    query: sa.Select[Any],
    sort_column: sa.ColumnElement[Any],
    id_column: sa.ColumnElement[Any],
    descending: bool,
    max_results: int,
    next_token: str | None,
    filters: dict[str, Any],
    sort_key: str,
) -> Page:
    """Run `query` ordered by (sort_column, id) from where `next_token` left off; `sort_key` names the
    label of the sort column in the selected rows."""
    fingerprint = _fingerprint(filters)
    if next_token:
        key, last_id = _decode(next_token, fingerprint, sort_column.type.python_type)
        after = (
            sa.or_(sort_column < key, sa.and_(sort_column == key, id_column < last_id))
            if descending
            else sa.or_(sort_column > key, sa.and_(sort_column == key, id_column > last_id))
        )
        # The redundant bound on the sort column alone is what PostgreSQL can seek the index with: it does not
        # use the OR form as an index condition, and a deep page would walk and discard every row before it.
        bound = sort_column <= key if descending else sort_column >= key
        query = query.where(bound, after)
    order = (sort_column.desc(), id_column.desc()) if descending else (sort_column.asc(), id_column.asc())
    rows = list((await conn.execute(query.order_by(*order).limit(max_results + 1))).all())
    token = None
    if len(rows) > max_results:
        rows = rows[:max_results]
        last = rows[-1]._mapping
        payload = {"k": last[sort_key], "i": last["id"], "f": fingerprint}
        token = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return Page(rows, token)


def time_filters(column_created: Any, column_modified: Any, params: dict[str, Any]) -> list[Any]:
    """The CreationTimeAfter/Before and LastModifiedTimeAfter/Before filters every List has."""
    conds = []
    if params.get("creation_time_after") is not None:
        conds.append(column_created >= params["creation_time_after"])
    if params.get("creation_time_before") is not None:
        conds.append(column_created <= params["creation_time_before"])
    if params.get("last_modified_time_after") is not None:
        conds.append(column_modified >= params["last_modified_time_after"])
    if params.get("last_modified_time_before") is not None:
        conds.append(column_modified <= params["last_modified_time_before"])
    return conds
