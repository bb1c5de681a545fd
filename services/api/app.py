"""The admin and query API: `ledgergate run api` (FastAPI + uvicorn).

Reads come from the PostgreSQL read model the projector maintains; writes become BudgetCommands on
budget.commands, so the budget-manager stays the ledger's only writer. OpenAPI UI at /docs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool

from ledgergate.services.api import errors
from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    RequestContextMiddleware,
    UnhandledErrorMiddleware,
)
from ledgergate.services.api.routes import (
    admin,
    alerts,
    balances,
    budgets,
    credentials,
    dashboard,
    decisions,
    health,
    ledger,
    policies,
    reports,
    templates,
)
from ledgergate.services.api.templates import TemplateRegistry
from ledgergate.shared import db, metrics
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import ApiSettings

DESCRIPTION = """\
Budgets, policies, balances, ledger, decisions and spend reports of ledgergate tenants.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. A tenant key reaches only its
own tenant (read-only unless created with write access); an admin key reaches every tenant.
Writes answer **202** with a command id: the budget-manager applies the command asynchronously and the
read model shows its effect once the projector has caught up. Money is integer micro-USD.
Signing credentials (`/v1/tenants/{tenant_id}/credentials`) and prompt templates
(`/v1/tenants/{tenant_id}/templates`) are the exception: the API is their writer, and a change is published
to the gate before it is answered.
"""


def _migrate(settings: ApiSettings) -> list[str]:
    """Apply pending migrations, waiting for PostgreSQL to accept connections (it may start after us)."""
    deadline = time.monotonic() + settings.api_start_timeout_s
    while True:
        try:
            return db.migrate(settings.pg_dsn)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    log = configure("api")
    metrics.configure("api", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.api_migrate:
            applied = _migrate(settings)
            log.info("migrations", applied=applied)
        # check_connection on checkout: after a PostgreSQL restart a request gets a fresh connection
        # instead of a dead one. open(wait=False): the API starts (and /readyz reports) while PG is away.
        pool = ConnectionPool(settings.pg_dsn, min_size=settings.api_pool_min,
                              max_size=max(settings.api_pool_max, settings.api_pool_min),
                              timeout=settings.api_pool_timeout_s, open=False, name="api",
                              check=ConnectionPool.check_connection, kwargs={"connect_timeout": 5})
        pool.open(wait=False)
        publisher = CommandPublisher(settings, settings.api_command_timeout_s)
        app.state.settings, app.state.pool, app.state.publisher = settings, pool, publisher
        app.state.templates = TemplateRegistry(settings, publisher)
        log.info("api_started", host=settings.api_host, port=settings.api_port, topic_prefix=settings.topic_prefix)
        try:
            yield
        finally:
            publisher.close()
            pool.close()
            log.info("api_stopped")

    app = FastAPI(title="ledgergate", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    for module in (health, budgets, policies, credentials, templates, balances, ledger, decisions, reports, alerts,
                   admin, dashboard):
        app.include_router(module.router)
    # The dashboard's scripts, styles and the vendored chart library, from this package (never a CDN).
    app.mount("/dashboard/assets", StaticFiles(directory=dashboard.STATIC_DIR), name="dashboard-assets")
    # Added last = outermost: the request id exists before the body limit can answer 413, and before an
    # unexpected exception becomes a JSON 500.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(MetricsMiddleware)  # outside the 500 backstop and the 413: it sees their status
    app.add_middleware(RequestContextMiddleware)
    return app


def run(settings: ApiSettings | None = None) -> None:
    settings = settings or ApiSettings()
    # log_config=None keeps ledgergate.shared.logging's JSON setup; the middleware writes the access log.
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None,
                access_log=False, proxy_headers=False, timeout_graceful_shutdown=10)
