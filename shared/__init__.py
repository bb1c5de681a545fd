"""ledgergate's common library: events, Avro codec, Kafka runtime, settings, logging, tokenizers, SDK."""
