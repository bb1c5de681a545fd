"""The OpenAI-compatible gateway: `ledgergate run proxy`."""
