"""`ledgergate run <service>`: one process per service, started by name."""

from __future__ import annotations

import importlib

from ledgergate.errors import LedgergateError

# Imported lazily: a process loads only its own service (the tokenizer ranks cost ~100 MB).
SERVICES: dict[str, str] = {
    "token-counter": "ledgergate.services.token_counter.app",
    "policy": "ledgergate.services.policy.app",
    "budget-manager": "ledgergate.services.budget_manager.app",
    "router": "ledgergate.services.router.app",
    "projector": "ledgergate.services.projector.app",
    "api": "ledgergate.services.api.app",
    "alerter": "ledgergate.services.alerter.app",
}


def run(name: str) -> None:
    module_name = SERVICES.get(name)
    if module_name is None:
        raise LedgergateError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LedgergateError(f"service {name!r} is not built yet ({exc})") from exc
    module.run()
