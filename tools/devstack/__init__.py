"""The local stack: a real single-node Kafka (KRaft) and a real PostgreSQL cluster, owned by the project."""
