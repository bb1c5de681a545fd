"""Keyset paging: an opaque cursor holds the sort key of the last row served, so a page costs an index
seek however deep it is and rows appended meanwhile never shift a page (unlike OFFSET)."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

from fastapi import Query

from services.api.errors import Unprocessable
from services.api.models import DEFAULT_PAGE, MAX_PAGE

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, 1..{MAX_PAGE}")]
Cursor = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")]
Offset = Annotated[int | None, Query(ge=0, le=1_000_000, description="rows to skip; instead of `cursor`")]
Order = Annotated[Literal["asc", "desc"], Query(description="by time, then id")]
FromMs = Annotated[int | None, Query(ge=0, le=2**62, description="inclusive lower bound, epoch ms")]
ToMs = Annotated[int | None, Query(ge=0, le=2**62, description="exclusive upper bound, epoch ms")]
FilterId = Annotated[str | None, Query(min_length=1, max_length=128)]

__all__ = ["DEFAULT_PAGE", "Cursor", "FilterId", "FromMs", "Limit", "Offset", "Order", "ToMs",
           "decode_cursor", "encode_cursor", "keyset"]


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The key a cursor holds, checked against the expected element types; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except ValueError:
        raise Unprocessable("cursor: not a cursor this API issued") from None
    if (not isinstance(key, list) or len(key) != len(types)
            or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types, strict=True))):
        raise Unprocessable("cursor: not a cursor this API issued")
    return key


def keyset(columns: tuple[str, str], order: str, cursor: str | None, offset: int | None,
           types: tuple[type, type]) -> tuple[str, list[Any], str, str]:
    """(WHERE fragment or "", its params, ORDER BY clause, OFFSET clause) for a two-column key.

    `columns` are trusted identifiers from the route, never user input.
    """
    if cursor is not None and offset is not None:
        raise Unprocessable("give either cursor or offset, not both")
    direction = "ASC" if order == "asc" else "DESC"
    order_by = f"ORDER BY {columns[0]} {direction}, {columns[1]} {direction}"
    if cursor is None:
        return "", [], order_by, (f"OFFSET {int(offset)}" if offset else "")
    key = decode_cursor(cursor, types)
    op = ">" if order == "asc" else "<"
    # Row comparison uses the composite index's order directly.
    return f"({columns[0]}, {columns[1]}) {op} (%s, %s)", key, order_by, ""
