"""The Kafka envelope schema and its codec."""
