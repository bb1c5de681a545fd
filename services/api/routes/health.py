"""Liveness, readiness and Prometheus metrics, unauthenticated (orchestrators and Prometheus call them
without keys; the metrics carry no tenant unless LEDGERGATE_METRICS_TENANT_LABEL says so).

/healthz answers while the process serves HTTP at all; /readyz only when a real query reaches PostgreSQL
(with the API's tables migrated) and Kafka answers a metadata request for budget.commands.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

from ledgergate.services.api.commands import CommandPublisher
from ledgergate.services.api.models import Health
from ledgergate.shared import metrics, readmodel

router = APIRouter(tags=["health"])
_PROBE_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _postgres(pool: ConnectionPool) -> str | None:
    try:
        with pool.connection(timeout=_PROBE_TIMEOUT_S) as conn:
            migrated = readmodel.has_api_keys_table(conn)
    except Exception as exc:  # any failure means not ready; the reason goes to the probe's body
        return f"postgres: {type(exc).__name__}: {exc}"
    return None if migrated else "postgres: table api_keys missing (migrations not applied)"


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics_page() -> Response:
    """The API process's metrics, Prometheus text format (README, section "Metrics")."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> JSONResponse:
    publisher: CommandPublisher = request.app.state.publisher
    problems = {"postgres": _postgres(request.app.state.pool), "kafka": publisher.ready(_PROBE_TIMEOUT_S)}
    checks = {name: problem or "ok" for name, problem in problems.items()}
    ready = not any(problems.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
