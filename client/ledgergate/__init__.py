"""ledgergate: the public package an agent app installs (`pip install ledgergate`).

    from ledgergate import GateClient

    with GateClient() as gate:
        decision = gate.request("acme", [{"role": "user", "content": "hello"}], model="gpt-4o",
                                max_output_tokens=256, workflow_id="support")
        if decision["outcome"] in ("ALLOW", "DOWNGRADE"):
            ...  # call decision["deployment"]["model"], then gate.complete(...) with the usage it reported

It holds the gate's wire contract as well as the SDK: the Avro schemas and their codec, the topic names,
the id rules, the Kafka connection settings (TLS, SASL: ledgergate.connection) and the Kafka client
options. The server (ledgergate.shared, ledgergate.services, ledgergate.tools, in the ledgergate-server
distribution) builds on these and nothing here imports it.
"""

from __future__ import annotations

from ledgergate.client import DecisionFuture, GateClient
from ledgergate.commands import COMMAND_KINDS, BudgetCommand
from ledgergate.connection import KafkaConnection, Secret
from ledgergate.errors import (
    ConnectionSettingsError,
    GateClientError,
    GateOverloadedError,
    GateTimeoutError,
    KafkaAuthenticationError,
    KafkaUnreachableError,
    LedgergateError,
)
from ledgergate.settings import ClientSettings
from ledgergate.signing import Credential

__version__ = "0.1.0"
__all__ = ["COMMAND_KINDS", "BudgetCommand", "ClientSettings", "ConnectionSettingsError", "Credential",
           "DecisionFuture", "GateClient", "GateClientError", "GateOverloadedError", "GateTimeoutError",
           "KafkaAuthenticationError", "KafkaConnection", "KafkaUnreachableError", "LedgergateError", "Secret",
           "__version__"]
