"""The API's logger, looked up per call: a logger bound at import time would predate
ledgergate.shared.logging.configure() (create_app calls it) and render in structlog's console format, not JSON."""

from __future__ import annotations

from typing import Any

from ledgergate.shared import logging as lg_logging


def log() -> Any:
    return lg_logging.get("api")
