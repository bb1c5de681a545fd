"""BudgetCommand, the operator's change to budgets or policy: the one builder every sender uses (the SDK,
the admin API, the benchmark's seeding), with its choices taken from schemas/avro/budget_command.avsc."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ledgergate.codec import codec
from ledgergate.errors import CodecError

COMMAND_KINDS: tuple[str, ...] = codec().enum_symbols("BudgetCommand", "kind")
SCOPE_TYPES: tuple[str, ...] = codec().enum_symbols("BudgetCommand", "scope_type")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class BudgetCommand:
    """One command; `command_id` is its idempotency key (a redelivered command applies once)."""

    tenant_id: str
    kind: str
    scope_type: str = "TENANT"
    # Empty for a TENANT scope means the tenant itself.
    scope_id: str = ""
    amount_micro_usd: int = 0
    request_id: str | None = None
    policy_json: str | None = None
    reason: str = ""
    issued_by: str = ""
    command_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    issued_at_ms: int = field(default_factory=_now_ms)

    def __post_init__(self) -> None:
        if self.kind not in COMMAND_KINDS:
            raise CodecError(f"unknown command kind {self.kind!r}; one of {', '.join(COMMAND_KINDS)}")
        if self.scope_type not in SCOPE_TYPES:
            raise CodecError(f"unknown scope type {self.scope_type!r}; one of {', '.join(SCOPE_TYPES)}")
        if isinstance(self.amount_micro_usd, bool) or not isinstance(self.amount_micro_usd, int):
            raise CodecError(f"amount_micro_usd must be an integer number of micro-USD, got {self.amount_micro_usd!r}")
        if self.scope_type == "TENANT" and not self.scope_id:
            object.__setattr__(self, "scope_id", self.tenant_id)

    def to_record(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "tenant_id": self.tenant_id, "kind": self.kind,
                "scope_type": self.scope_type, "scope_id": self.scope_id, "amount_micro_usd": self.amount_micro_usd,
                "request_id": self.request_id, "policy_json": self.policy_json, "reason": self.reason,
                "issued_by": self.issued_by, "issued_at_ms": self.issued_at_ms}

    def encode(self) -> bytes:
        return codec().encode("BudgetCommand", self.to_record())
