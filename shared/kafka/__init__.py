"""Kafka plumbing shared by the services, the SDK and the tools: client configs, topics, runtime."""
