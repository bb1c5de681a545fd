"""Budget commands: set / raise / lower a limit, grant credit, void a reservation.

Each route only publishes a BudgetCommand and answers 202 with its id: the budget-manager is the ledger's
single writer, so validation that needs the ledger's state (e.g. lowering below zero, voiding a
reservation that is not live) happens there, and a rejected command is dead-lettered with its reason.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, status
from fastapi.types import DecoratedCallable

from ledgergate.commands import BudgetCommand
from ledgergate.services.api.deps import CurrentPrincipal, Publisher, WritableTenant
from ledgergate.services.api.models import BudgetCreate, BudgetUpdate, CommandAccepted, CreditCreate, VoidCreate
from ledgergate.services.api.paging import IdPath

router = APIRouter(prefix="/v1/tenants/{tenant_id}", tags=["budgets"])


def accepted(path: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    # One place for what every command route shares: it only publishes, so it answers 202 with the command's id.
    return router.post(path, summary=summary, status_code=status.HTTP_202_ACCEPTED, response_model=CommandAccepted)


def accept(publisher: Publisher, principal: CurrentPrincipal, cmd: BudgetCommand) -> CommandAccepted:
    command_id = publisher.publish(cmd, issued_by=f"api:{principal.key_id}")
    return CommandAccepted(command_id=command_id, tenant_id=cmd.tenant_id, kind=cmd.kind)


@accepted("/budgets", "Set a tenant or workflow limit")
def set_budget(tenant_id: WritableTenant, body: BudgetCreate, publisher: Publisher,
               principal: CurrentPrincipal) -> CommandAccepted:
    return accept(publisher, principal, BudgetCommand(tenant_id, "SET_LIMIT", body.scope, body.scope_id(tenant_id),
                                                body.limit_micro_usd, reason=body.reason))


@accepted("/budgets/raise", "Raise a limit by an amount")
def raise_budget(tenant_id: WritableTenant, body: BudgetUpdate, publisher: Publisher,
                 principal: CurrentPrincipal) -> CommandAccepted:
    return accept(publisher, principal, BudgetCommand(tenant_id, "RAISE_LIMIT", body.scope, body.scope_id(tenant_id),
                                                body.amount_micro_usd, reason=body.reason))


@accepted("/budgets/lower", "Lower a limit by an amount")
def lower_budget(tenant_id: WritableTenant, body: BudgetUpdate, publisher: Publisher,
                 principal: CurrentPrincipal) -> CommandAccepted:
    return accept(publisher, principal, BudgetCommand(tenant_id, "LOWER_LIMIT", body.scope, body.scope_id(tenant_id),
                                                body.amount_micro_usd, reason=body.reason))


@accepted("/credits", "Grant credit for the current period")
def grant_credit(tenant_id: WritableTenant, body: CreditCreate, publisher: Publisher,
                 principal: CurrentPrincipal) -> CommandAccepted:
    return accept(publisher, principal, BudgetCommand(tenant_id, "GRANT_CREDIT", body.scope, body.scope_id(tenant_id),
                                                body.amount_micro_usd, reason=body.reason))


@accepted("/reservations/{request_id}/void", "Release a live reservation")
def void_reservation(tenant_id: WritableTenant, request_id: IdPath, publisher: Publisher, principal: CurrentPrincipal,
                     body: VoidCreate | None = None) -> CommandAccepted:
    return accept(publisher, principal, BudgetCommand(tenant_id, "VOID_RESERVATION", request_id=request_id,
                                                reason=body.reason if body else ""))
