"""ledgergate: the public package an agent app installs (`pip install ledgergate`).

    from openai import OpenAI
    from ledgergate import Gate, GateClient, GateSettings
    from ledgergate.integrations.openai import gated

    client = gated(OpenAI(), Gate(GateClient(), GateSettings(tenant_id="acme", workflow_id="support")))
    reply = client.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=256)  # gated, settled

Underneath: `Gate.admit` (ledgergate.admission) asks for a decision and returns a Grant to settle;
`GateClient.request` / `complete` are the raw request and completion events.

It holds the gate's wire contract as well as the SDK: the Avro schemas and their codec, the topic names,
the id rules, the Kafka connection settings (TLS, SASL: ledgergate.connection) and the Kafka client
options. The server (ledgergate.shared, ledgergate.services, ledgergate.tools, in the ledgergate-server
distribution) builds on these and nothing here imports it.
"""

from __future__ import annotations

from ledgergate.admission import FAIL_OPEN, Gate, GateSettings, Grant
from ledgergate.client import DecisionFuture, GateClient
from ledgergate.commands import COMMAND_KINDS, BudgetCommand
from ledgergate.connection import KafkaConnection, Secret
from ledgergate.errors import (
    ConnectionSettingsError,
    GateClientError,
    GateDeniedError,
    GateOverloadedError,
    GateThrottledError,
    GateTimeoutError,
    GateUnavailableError,
    InvalidRequestError,
    KafkaAuthenticationError,
    KafkaUnreachableError,
    LedgergateError,
)
from ledgergate.settings import ClientSettings
from ledgergate.signing import Credential

__version__ = "0.1.0"
__all__ = ["COMMAND_KINDS", "FAIL_OPEN", "BudgetCommand", "ClientSettings", "ConnectionSettingsError", "Credential",
           "DecisionFuture", "Gate", "GateClient", "GateClientError", "GateDeniedError", "GateOverloadedError",
           "GateSettings", "GateThrottledError", "GateTimeoutError", "GateUnavailableError", "Grant",
           "InvalidRequestError", "KafkaAuthenticationError", "KafkaConnection", "KafkaUnreachableError",
           "LedgergateError", "Secret", "__version__"]
