"""`ledgergate run <service>`: one process per service, started by name; `--instances N` runs N of them
under the service runner's supervisor until SIGTERM or Ctrl-C."""

from __future__ import annotations

import importlib
import signal
import sys
import threading

from ledgergate.errors import LedgergateError
from ledgergate.shared.settings import StackSettings

# Imported lazily: a process loads only its own service (the tokenizer ranks cost ~100 MB).
SERVICES: dict[str, str] = {
    "token-counter": "ledgergate.services.token_counter.app",
    "policy": "ledgergate.services.policy.app",
    "budget-manager": "ledgergate.services.budget_manager.app",
    "router": "ledgergate.services.router.app",
    "projector": "ledgergate.services.projector.app",
    "api": "ledgergate.services.api.app",
    "alerter": "ledgergate.services.alerter.app",
    "snapshotter": "ledgergate.services.snapshotter.app",
    "anomaly": "ledgergate.services.anomaly.app",
    "proxy": "ledgergate.services.proxy.app",
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


def run_instances(name: str, count: int) -> int:
    """N instances of one service as child processes, restarted when one exits unasked; stops them all on
    SIGTERM or SIGINT. The exit code is 0 once they are stopped."""
    from ledgergate.tools.servicerunner import ServiceSet, instance_name

    if name not in SERVICES:
        raise LedgergateError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    log_dir = StackSettings().data_dir / "logs"
    names = [instance_name(name, i) for i in range(count)]
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with ServiceSet({}, log_dir, supervise=True) as services:
        services.start(names)
        print(f"{count} instances of {name}: " + ", ".join(f"{n} (pid {services.pid(n)})" for n in names)
              + f"; logs in {log_dir}", file=sys.stderr)
        stopping.wait()
        print(f"stopping {count} instances of {name}", file=sys.stderr)
    return 0
