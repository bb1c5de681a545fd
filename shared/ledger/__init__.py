"""The budget ledger: entry types (mirroring schemas/avro) and the pure balance fold shared by the
budget-manager, the policy service, the projector and audit replay."""
