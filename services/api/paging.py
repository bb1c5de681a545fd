"""Keyset paging: an opaque cursor holds the sort key of the last row served, so a page costs an index
seek however deep it is and rows appended meanwhile never shift a page (unlike OFFSET).

Also the query and path parameter types every route reuses, each bounded by ledgergate.ids' one rule, so no
parameter reaches PostgreSQL with a NUL, a control character or an unbounded length.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

from fastapi import Path, Query

from ledgergate.ids import ID_PATTERN, MAX_ID_CHARS, MAX_NAME_CHARS
from ledgergate.services.api.errors import Unprocessable
from ledgergate.services.api.models import DEFAULT_PAGE, MAX_PAGE, printable
from ledgergate.shared import readmodel

# A UTC month, YYYY-MM. [0-9], not \d (which also matches other scripts' digits); years 1970..2999, so
# the month after it always exists.
PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
MAX_CURSOR_CHARS = 512
_BIGINT = (-(2**63), 2**63 - 1)

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, 1..{MAX_PAGE}")]
Cursor = Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS, description="`next_cursor` of the previous page")]
Offset = Annotated[int | None, Query(ge=0, le=1_000_000, description="rows to skip; instead of `cursor`")]
Order = Annotated[Literal["asc", "desc"], Query(description="by time, then id")]
FromMs = Annotated[int | None, Query(ge=0, le=2**62, description="inclusive lower bound, epoch ms")]
ToMs = Annotated[int | None, Query(ge=0, le=2**62, description="exclusive upper bound, epoch ms")]
# An id filter (workflow, tenant): ledgergate.ids' id rule.
FilterId = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
# A name filter (model, entry type): ledgergate.ids' name rule, printable and 1..128 characters.
FilterName = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME_CHARS), printable()]
# An id in the path (request id).
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
Period = Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="a UTC month, YYYY-MM")]

__all__ = ["DEFAULT_PAGE", "Cursor", "FilterId", "FilterName", "FromMs", "IdPath", "Limit", "Offset", "Order",
           "Period", "ToMs", "decode_cursor", "encode_cursor", "keyset_page"]


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The key a cursor holds, checked against the expected element types; 422 for anything else.

    A cursor is client input like any other: its strings must be printable and its integers fit a bigint,
    or a crafted one would carry a NUL or an overflow into the query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, RecursionError):
        raise Unprocessable("cursor: not a cursor this API issued") from None
    if (not isinstance(key, list) or len(key) != len(types)
            or not all(isinstance(v, t) and not isinstance(v, bool) and _sane(v)
                       for v, t in zip(key, types, strict=True))):
        raise Unprocessable("cursor: not a cursor this API issued")
    return key


def _sane(value: Any) -> bool:
    if isinstance(value, int):
        return _BIGINT[0] <= value <= _BIGINT[1]
    return isinstance(value, str) and value.isprintable() and len(value) <= MAX_CURSOR_CHARS


def keyset_page(order: readmodel.Order, cursor: str | None, offset: int | None) -> readmodel.Keyset:
    """Where the page a route's `order`, `cursor` and `offset` ask for starts, for a (time, id) sort key;
    422 for both a cursor and an offset, or a cursor this API did not issue."""
    if cursor is not None and offset is not None:
        raise Unprocessable("give either cursor or offset, not both")
    if cursor is None:
        return readmodel.Keyset(order, offset=offset or 0)
    time_ms, row_id = decode_cursor(cursor, (int, str))
    return readmodel.Keyset(order, after=(time_ms, row_id))
