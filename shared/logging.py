"""structlog JSON logs. Bind `tenant_id` and `request_id`; never log prompt or completion text."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from structlog.typing import FilteringBoundLogger

_configured = False


# Loggers are FilteringBoundLoggers: the wrapper class configured below (and structlog's default before
# configure() runs), not structlog.stdlib.BoundLogger, which only a stdlib wrapper_class would give.
def configure(service: str, level: str | None = None) -> FilteringBoundLogger:
    global _configured
    if not _configured:
        logging.basicConfig(stream=sys.stderr, level=(level or os.environ.get("LEDGERGATE_LOG_LEVEL", "INFO")).upper(),
                            format="%(message)s")
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelName((level or os.environ.get("LEDGERGATE_LOG_LEVEL", "INFO")).upper())),
            cache_logger_on_first_use=True,
        )
        _configured = True
    return get(service)


def get(service: str) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger()  # typed Any by structlog: it returns a lazy proxy
    return logger.bind(service=service)
