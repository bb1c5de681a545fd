"""PUT a tenant's policy document. It is validated here, against the built-in default policy, before it
becomes a SET_POLICY command: a document the policy service would refuse must never reach the ledger."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, status

from ledgergate.commands import BudgetCommand
from ledgergate.ids import name_problem
from ledgergate.services.api.deps import CurrentPrincipal, DbConn, Publisher, ReadableTenant, WritableTenant
from ledgergate.services.api.errors import Unprocessable
from ledgergate.services.api.models import CommandAccepted, PolicyPublic
from ledgergate.services.api.routes.budgets import accept
from ledgergate.shared import readmodel
from ledgergate.shared.policy import PolicyError, default_policy, parse_policy

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["policies"])
MAX_DOCUMENT_DEPTH = 8  # the policy schema nests three levels (tier_rules: list of objects); leave headroom
_BIGINT = (-(2**63), 2**63 - 1)

_EXAMPLE = {"allowed_models": ["gpt-4o-mini", "gpt-4o"], "max_output_tokens": 2048, "rate_limit_per_s": 50}


@router.put("/policy", status_code=status.HTTP_202_ACCEPTED, response_model=CommandAccepted,
            summary="Replace the tenant's policy document",
            description="The document overrides the default policy field by field; unknown keys are errors.")
def put_policy(tenant_id: WritableTenant, document: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])],
               publisher: Publisher, principal: CurrentPrincipal) -> CommandAccepted:
    if problem := document_problem(document):
        raise Unprocessable(f"policy document: {problem}")
    # Canonical form: the same document always produces the same bytes on the ledger.
    policy_json = json.dumps(document, sort_keys=True, separators=(",", ":"))
    try:
        parse_policy(policy_json, default_policy())
    except PolicyError as exc:
        raise Unprocessable(exc.message[:2000]) from None
    return accept(publisher, principal, BudgetCommand(tenant_id, "SET_POLICY", policy_json=policy_json,
                                                reason="api"))


def document_problem(document: dict[str, Any]) -> str | None:
    """Every key and string in a document is a name (a model, a tier, a priority): ledgergate.ids' name rule;
    every integer fits a bigint. Iterative and bounded in depth: a deep document is refused, not recursed."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_DOCUMENT_DEPTH:
            return f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                if problem := name_problem("a key", key):
                    return problem
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and (problem := name_problem("a string", value)):
            return problem
        elif isinstance(value, int) and not _BIGINT[0] <= value <= _BIGINT[1]:
            return "a number is outside the 64-bit integer range"
    return None


@router.get("/policy", response_model=PolicyPublic, summary="The tenant's current policy (from the ledger)")
def get_policy(tenant_id: ReadableTenant, db: DbConn) -> PolicyPublic:
    change = readmodel.latest_policy_change(db, tenant_id)
    if change is None:
        return PolicyPublic(tenant_id=tenant_id, policy_version=0, document={},
                            effective=default_policy().model_dump(mode="json"), recorded_at_ms=None)
    body, recorded_at_ms = change.body, change.recorded_at_ms
    try:
        effective = parse_policy(body["policy_json"], default_policy()).model_dump(mode="json")
        document = json.loads(body["policy_json"])
    except PolicyError:
        # Set around this API (CLI, SDK) and invalid: the policy service refuses it too, so nothing applies.
        effective, document = {}, {}
    return PolicyPublic(tenant_id=tenant_id, policy_version=body["policy_version"], document=document,
                        effective=effective, recorded_at_ms=recorded_at_ms)
